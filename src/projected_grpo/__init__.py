"""projected_grpo: does removing a hack direction from every GRPO gradient stop reward hacking?"""

__version__ = "0.1.0"  # the version, here only: pyproject.toml reads it (dynamic), `pgrpo --version` prints it
