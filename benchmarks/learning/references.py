"""The learning benchmark's reference policies: scripted returns that a learning curve is read against."""


def reference_returns(task: str, n_episodes: int, seed: int = 0) -> dict[str, list[float]]:
    """Returns of the task's reference policies, where it has some: the maze's (random, memoryless wall-avoider,
    shortest-path oracle) and MiniGrid Memory's (:func:`minigrid_memory_returns`)."""
    import gymnasium as gym

    from sb3_stpn.envs import GRID_MAZE_IDS
    from sb3_stpn.envs.grid_maze_vec import REFERENCE_POLICIES
    from sb3_stpn.envs.grid_maze_vec import reference_returns as maze_returns

    if task.startswith("MiniGrid-Memory"):
        return minigrid_memory_returns(task, n_episodes, seed)
    if task not in GRID_MAZE_IDS:
        return {}
    maze_kwargs = gym.spec(task).kwargs
    return {name: maze_returns(policy, n_episodes, seed, **maze_kwargs) for name, policy in REFERENCE_POLICIES.items()}


def minigrid_memory_returns(task: str, n_episodes: int, seed: int = 0) -> dict[str, list[float]]:
    """
    Returns of two scripted MiniGrid Memory policies over episodes ``seed, seed + 1, ...``: ``oracle`` walks the
    hallway to the object that matches the one shown at the start; ``memoryless`` walks the same path and always
    takes the upper object. No policy without memory can tell the two apart, so ``memoryless``'s mean (half the
    oracle's) is the most a memoryless policy earns: a learning curve below it has learned no recall.
    """
    import gymnasium as gym
    from minigrid.core.actions import Actions

    env = gym.make(task)
    returns: dict[str, list[float]] = {"memoryless": [], "oracle": []}
    for name, episodes in returns.items():
        for episode in range(n_episodes):
            env.reset(seed=seed + episode)
            memory = env.unwrapped  # the agent starts in the hallway's row, facing the objects' column
            success_x, success_y = memory.success_pos
            upper = name == "memoryless" or success_y < memory.agent_pos[1]
            path = [Actions.forward] * (success_x - memory.agent_pos[0]) + [Actions.left if upper else Actions.right]
            total, terminated = 0.0, False
            for action in [*path, Actions.forward]:
                _, reward, terminated, _, _ = env.step(action)
                total += float(reward)
            assert terminated, "the scripted path must end at one of the two objects"
            episodes.append(total)
    env.close()
    return returns
