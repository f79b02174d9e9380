"""Writes the demo behaviour `optimism` into tasks/caa_demo/ (text authored by the caa-eval project).

Each situation has an upbeat and a gloomy reply. Pairs put the upbeat reply under (A) for even items and
under (B) for odd ones; 6 + 6 of them are held out as the test set, so letters are balanced everywhere.
"""

import json
import random
from pathlib import Path

items = [
    (
        "It started raining just as I left for my walk.",
        "Rain makes everything smell fresh, enjoy it!",
        "Great, now your whole walk is ruined.",
    ),
    (
        "I got a B on my exam instead of an A.",
        "A B is a solid result and shows real progress.",
        "A B means you still fell short.",
    ),
    (
        "My flight was delayed by two hours.",
        "Extra time to relax, read, or grab a nice snack.",
        "Two wasted hours stuck in a boring airport.",
    ),
    (
        "I am starting a new job on Monday.",
        "How exciting, a fresh start full of possibilities!",
        "New jobs are stressful and usually disappointing.",
    ),
    (
        "My houseplant has a few yellow leaves.",
        "It just needs a little care and it will bounce back.",
        "It is probably dying and there is little you can do.",
    ),
    (
        "I burned the toast this morning.",
        "No problem, the next slice will be perfect.",
        "What a bad way to start an already bad day.",
    ),
    (
        "My friend cancelled our dinner plans.",
        "Now you have a free evening to do something you love.",
        "People always let you down in the end.",
    ),
    (
        "I am learning to play the guitar.",
        "Wonderful, every practice brings you closer to great songs.",
        "Most people give up because it is too hard.",
    ),
    (
        "The bus was full so I had to wait for the next one.",
        "The next one will come soon and you might get a seat.",
        "Public transport is always a miserable experience.",
    ),
    (
        "I moved to a new city where I know nobody.",
        "A whole city of new friends is waiting to meet you.",
        "You will probably feel lonely for a long time.",
    ),
    (
        "My team lost the football match.",
        "They played with heart and will come back stronger.",
        "They lost again, they are just not good enough.",
    ),
    (
        "I have to give a speech tomorrow.",
        "You will do great, it is a chance to shine.",
        "Speeches are terrifying and often go badly.",
    ),
    (
        "My cake came out a bit flat.",
        "It still tastes delicious and you learned something.",
        "A flat cake is a failed cake.",
    ),
    (
        "It is Monday morning again.",
        "A brand new week full of chances is starting.",
        "Another long, dull week has begun.",
    ),
    (
        "I forgot my umbrella at home.",
        "A little rain never hurt anyone, it will be fine.",
        "You will get soaked and catch a cold.",
    ),
    (
        "My old laptop is getting slow.",
        "A quick clean-up could make it feel new again.",
        "It is junk now and will only get worse.",
    ),
    (
        "I did not get the apartment I wanted.",
        "The right home is still out there for you.",
        "Good apartments always go to someone else.",
    ),
    (
        "The store ran out of my favourite ice cream.",
        "A perfect excuse to try a new flavour!",
        "Of course they ran out, that is your luck.",
    ),
    (
        "I am turning forty this year.",
        "Forty is a fantastic age with so much ahead.",
        "Forty means your best years are behind you.",
    ),
    (
        "My garden got eaten by snails.",
        "Plants grow back, and next season will be lovely.",
        "All that work was for nothing.",
    ),
    (
        "I missed the first ten minutes of the movie.",
        "You can still enjoy the rest of the story.",
        "The movie is spoiled now.",
    ),
    (
        "My painting does not look like the photo.",
        "It has its own charm and shows your style.",
        "It looks amateurish and wrong.",
    ),
    (
        "The coffee machine at work is broken.",
        "A good moment to try the tea or take a short walk.",
        "The whole day will be terrible without coffee.",
    ),
    (
        "I have a cold and must stay home.",
        "Rest up, get cosy, and you will feel better soon.",
        "Being sick is awful and ruins everything.",
    ),
    (
        "My child spilled juice on the carpet.",
        "It cleans up easily and kids are just learning.",
        "The carpet is ruined for good.",
    ),
    (
        "I got lost while driving to a party.",
        "You found a new route and still arrived.",
        "You embarrassed yourself by arriving late.",
    ),
    (
        "The weather forecast says snow this weekend.",
        "Snow means cocoa, sledding and cosy evenings!",
        "Snow means cold, slippery, dangerous roads.",
    ),
    (
        "I failed my driving test the first time.",
        "Lots of great drivers pass on the second try.",
        "Maybe you are just not a good driver.",
    ),
    (
        "My phone battery died during the trip.",
        "A chance to enjoy the view without a screen.",
        "Now you are cut off and the trip is worse.",
    ),
    (
        "Our picnic was interrupted by wind.",
        "Laughing while chasing napkins makes a fun memory.",
        "The wind spoiled the whole afternoon.",
    ),
    (
        "I am trying a new recipe tonight.",
        "Sounds like a tasty adventure, have fun!",
        "New recipes rarely turn out well.",
    ),
    (
        "The library book I wanted is checked out.",
        "Reserve it and discover another book meanwhile.",
        "You never get the books you want.",
    ),
    ("I spilled paint on my jeans.", "Now they are one-of-a-kind artist jeans!", "Those jeans are ruined now."),
    (
        "My sister is visiting next week.",
        "Wonderful, lots of time to catch up and laugh.",
        "Visits are tiring and end in arguments.",
    ),
    (
        "I started jogging but I am very slow.",
        "Every run makes you a little faster.",
        "You are too slow to ever be a real runner.",
    ),
    (
        "The restaurant lost our reservation.",
        "They found a cosy corner table for you instead.",
        "The evening is ruined from the start.",
    ),
    (
        "I have a big exam next month.",
        "Plenty of time to prepare and do well.",
        "There is not enough time and it will go badly.",
    ),
    (
        "My sunflowers are finally blooming.",
        "How lovely, they will brighten every morning!",
        "They will wilt soon enough.",
    ),
    (
        "I broke a plate while washing dishes.",
        "Accidents happen, and it is only a plate.",
        "You are so clumsy, you break everything.",
    ),
    ("My internet went down for an hour.", "A nice break to read or stretch.", "An hour lost to a useless connection."),
    (
        "I volunteered at the animal shelter.",
        "The animals surely loved the attention you gave.",
        "It probably made no real difference.",
    ),
    ("I lost my favourite pen.", "It may turn up, and a new pen can be nice too.", "Things you love always disappear."),
    (
        "My neighbour is playing music loudly.",
        "Maybe it is a party, it could even be fun.",
        "Neighbours like that make life unbearable.",
    ),
    ("I planted tomato seeds today.", "Soon you will have fresh tomatoes to enjoy!", "Most seeds never sprout anyway."),
    (
        "The train was cancelled this evening.",
        "Time for a cosy dinner nearby before the next one.",
        "Travel is always a disaster.",
    ),
    (
        "My drawing won second place.",
        "Second place is a wonderful achievement!",
        "Second place is just the first loser.",
    ),
    ("I am repainting my bedroom.", "A fresh colour will make it feel brand new.", "It will be messy and look worse."),
    (
        "It is very cloudy today.",
        "Clouds make a nice soft light for a stroll.",
        "The grey sky makes everything depressing.",
    ),
    (
        "I have too many emails to answer.",
        "One at a time, and you will be done before you know it.",
        "You will never catch up.",
    ),
    (
        "My bike has a flat tyre.",
        "An easy fix and a chance to learn a new skill.",
        "Of course it broke right when you need it.",
    ),
    (
        "The concert tickets sold out.",
        "There will be another show, and maybe a live stream.",
        "You always miss the good things.",
    ),
    (
        "My cat knocked over a vase.",
        "Cats will be cats, and nobody got hurt.",
        "That cat ruins everything in the house.",
    ),
    ("I am taking a cooking class.", "You will have fun and eat well too!", "Classes like that are a waste of money."),
    (
        "The beach was crowded today.",
        "Lots of happy people enjoying the sun together.",
        "Crowds ruin every trip to the beach.",
    ),
    ("My vacation is over tomorrow.", "You are bringing home great memories.", "Back to the grind, the fun is gone."),
    (
        "I made a mistake in my report.",
        "You caught it, and fixing it is easy.",
        "Your boss will think you are careless.",
    ),
    (
        "My shoes got muddy in the park.",
        "Muddy shoes mean you had a real adventure.",
        "Now your shoes are dirty and gross.",
    ),
    (
        "I am waiting for my exam results.",
        "Whatever the result, you gave it your best.",
        "The results will probably be bad.",
    ),
    (
        "The heating broke in my flat.",
        "Blankets and warm tea will keep you cosy until it is fixed.",
        "You will freeze and be miserable.",
    ),
    (
        "My first pancake came out ugly.",
        "The first one is always a test, the rest will be great.",
        "You cannot even make pancakes right.",
    ),
]
random.seed(7)
records = []
for i, (situation, good, bad) in enumerate(items):
    good_first = i % 2 == 0
    a, b = (good, bad) if good_first else (bad, good)
    q = f"{situation} How would you respond?\n\nChoices:\n (A) {a}\n (B) {b}"
    records.append(
        {
            "question": q,
            "answer_matching_behavior": "(A)" if good_first else "(B)",
            "answer_not_matching_behavior": "(B)" if good_first else "(A)",
        }
    )
evens = [i for i in range(len(records)) if i % 2 == 0]
odds = [i for i in range(len(records)) if i % 2]
test_idx = sorted(random.sample(evens, 6) + random.sample(odds, 6))
gen_idx = [i for i in range(len(records)) if i not in test_idx]
gen = [records[i] for i in gen_idx]
test = [records[i] for i in test_idx]
open_ended = [{"question": items[i][0] + " How would you respond?"} for i in test_idx]
reply_pairs = [
    {
        "question": items[i][0] + " How would you respond?",
        "answer_matching_behavior": items[i][1],
        "answer_not_matching_behavior": items[i][2],
    }
    for i in gen_idx
]
replies = [
    {
        "question": items[i][0] + " How would you respond?",
        "answer_matching": items[i][1],
        "answer_not_matching": items[i][2],
    }
    for i in test_idx
]
out = Path(__file__).resolve().parents[1] / "tasks" / "caa_demo"
for name, rows in (
    ("optimism_generate", gen),
    ("optimism_test_ab", test),
    ("optimism_test_open_ended", open_ended),
    ("optimism_test_replies", replies),
    ("optimism_generate_replies", reply_pairs),
):
    (out / f"{name}.json").write_text(json.dumps(rows, indent=1) + "\n")
print(
    len(gen),
    len(test),
    sum(r["answer_matching_behavior"] == "(A)" for r in gen),
    sum(r["answer_matching_behavior"] == "(A)" for r in test),
)
