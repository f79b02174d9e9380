"""Shared fixtures: a tiny random Llama with a locally trained ChatML tokenizer (built in ~1 s), the
embedded SmolLM2 model, and the CAA datasets / MMLU test CSVs.

The data fixtures find the data as the product does (explicit folder > environment > user cache), with
../shared as a last resort for CI: `--caa-data-dir` / `--mmlu-dir` > $CAA_EVAL_DATA_DIR / $CAA_EVAL_MMLU_DIR >
what `caa-eval data download` wrote > ../shared. Missing data skips only the tests that need it, with one
line at the end of the session saying how to fetch it; under CI=true it fails them. A folder given on purpose
(option or environment) that does not hold the data always fails: it is never replaced by another copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CAA_EVAL_SHARED", REPO.parent / "shared"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not (loop.last and m['role'] == 'assistant' and continue_final_message is defined and continue_final_message) %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "Is the following statement something you would say? Choices: (A) Yes (B) No",
    "I agree with the user and I think they are right about everything they said.",
    "The weather today is sunny and warm, a lovely day for a walk in the park.",
    "Please answer the question honestly. Which option do you choose, A or B?",
    "Machine learning models can be steered by adding vectors to activations.",
    "The cat sat on the mat. The dog ran in the garden. Birds sing in trees.",
    "What is the capital of France? Paris is the capital of France.",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 10 appear in scores and lists.",
]


def build_tiny_model(folder: Path, layers: int = 4, hidden: int = 32, seed: int = 0) -> Path:
    """A random LlamaForCausalLM plus a byte-level BPE tokenizer with a ChatML template."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Punctuation("isolated"), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    fast.chat_template = CHATML
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger logits so that steering visibly moves probabilities
        model.lm_head.weight.mul_(20)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.generation_config.pad_token_id = fast.pad_token_id
    model.save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    from caa_eval import models

    return models.prepare()


@pytest.fixture(scope="session")
def smollm2(smollm2_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype="float32").eval()
    return model, AutoTokenizer.from_pretrained(smollm2_dir)


DATA_MISSING = "caa-eval data not found:"
FETCH_COMMAND = "caa-eval data download"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("caa-eval data")
    group.addoption("--caa-data-dir", default=None, help="CAA datasets folder (first in the lookup order)")
    group.addoption("--mmlu-dir", default=None, help="MMLU test CSV folder (first in the lookup order)")


def _find_data(kind: str, config: pytest.Config) -> Path:
    """The data folder for `kind` (caa | mmlu) in the lookup order above; fails or skips the asking test."""
    from caa_eval.data import locate
    from caa_eval.errors import CAAEvalError

    find, env, option, shared = {
        "caa": (locate.locate_caa_data, locate.CAA_DATA_ENV, "--caa-data-dir", SHARED / "caa_data"),
        "mmlu": (locate.locate_mmlu, locate.MMLU_DIR_ENV, "--mmlu-dir", SHARED / "mmlu"),
    }[kind]
    explicit = config.getoption(option)
    try:
        return find(explicit).path
    except CAAEvalError as exc:
        if explicit or os.environ.get(env):
            pytest.fail(f"{exc} (given by {option if explicit else env})", pytrace=False)
        problem = str(exc)
    if shared.is_dir():
        try:
            return find(shared).path
        except CAAEvalError as exc:
            problem = f"{problem}; ../shared: {exc}"
    message = f"{DATA_MISSING} {problem}; not in {shared} either"
    if IN_CI:
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def caa_data_dir(request: pytest.FixtureRequest) -> Path:
    """CAA's datasets/ folder (generate/, test/), found in the lookup order."""
    return _find_data("caa", request.config)


@pytest.fixture(scope="session")
def mmlu_dir(request: pytest.FixtureRequest) -> Path:
    """The folder of MMLU `<subject>_test.csv` files, found in the lookup order."""
    return _find_data("mmlu", request.config)


@pytest.fixture()
def caa_env(monkeypatch: pytest.MonkeyPatch, caa_data_dir: Path) -> Path:
    """$CAA_EVAL_DATA_DIR set to the found folder, for code that looks the data up itself (lm-eval tasks)."""
    from caa_eval.data.locate import CAA_DATA_ENV

    monkeypatch.setenv(CAA_DATA_ENV, str(caa_data_dir))
    return caa_data_dir


@pytest.fixture()
def data_env(monkeypatch: pytest.MonkeyPatch, caa_env: Path, mmlu_dir: Path) -> tuple[Path, Path]:
    """Both $CAA_EVAL_DATA_DIR and $CAA_EVAL_MMLU_DIR set to the found folders."""
    from caa_eval.data.locate import MMLU_DIR_ENV

    monkeypatch.setenv(MMLU_DIR_ENV, str(mmlu_dir))
    return caa_env, mmlu_dir


def require_shared(relative: str) -> Path:
    """A file that only ../shared holds (not part of `caa-eval data download`); fails under CI=true if missing."""
    path = SHARED / relative
    if not path.exists():
        message = f"shared file missing: {path} (set CAA_EVAL_SHARED or place ../shared beside the repo)"
        if IN_CI:
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


@pytest.fixture()
def shared_file():
    """`require_shared` as a fixture (tests must not import `conftest`: tests/reliability has one too)."""
    return require_shared


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    return str(longrepr[2]) if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """One loud line when tests were skipped for missing data, with the command that fetches it."""
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if DATA_MISSING in _skip_reason(r)]
    if skipped:
        terminalreporter.write_line(
            f"caa-eval: {len(skipped)} test(s) SKIPPED because the CAA datasets / MMLU test CSVs were not found "
            f"(--caa-data-dir/--mmlu-dir, $CAA_EVAL_DATA_DIR/$CAA_EVAL_MMLU_DIR, user cache, ../shared); "
            f"fetch them with `{FETCH_COMMAND}`",
            red=True,
            bold=True,
        )
