"""atheris fuzz target: `.venv/bin/python -m tests.fuzz.fuzz_group_membership [libFuzzer flags] [corpus folders]`."""

from tests.fuzz.run import main

if __name__ == "__main__":
    main("group_membership")
