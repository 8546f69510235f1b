import sys

from rl_safety.cli import main

if __name__ == "__main__":  # vLLM spawns processes that re-import the entry module
    sys.exit(main())
