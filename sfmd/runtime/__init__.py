"""What runs: the back ends that bring registry streams to life (tasks, processes)."""
