"""Test helpers shared by the test packages: planted behaviours, CAA reference code, task helpers, a fake judge server."""
