"""Roll out a trained agent and print its returns and memory energy: ``python enjoy.py --algo ppo_stpn --env X``."""

from sb3_stpn.cli import enjoy_main

if __name__ == "__main__":
    enjoy_main()
