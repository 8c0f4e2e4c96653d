"""Train an agent with the RL Zoo, STPN included: ``python train.py --algo ppo_stpn --env CartPoleNoVel-v1``."""

from sb3_stpn.cli import train_main

if __name__ == "__main__":
    train_main()
