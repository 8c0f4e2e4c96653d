import torch as th

# The test models are tiny: one thread avoids oversubscribing the small CI machine
th.set_num_threads(1)
