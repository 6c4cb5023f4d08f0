"""projected_grpo: does removing a hack direction from every GRPO gradient stop reward hacking?"""

__version__ = "0.1.0"
