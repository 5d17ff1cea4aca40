"""How a run optimises: the optimizer over its parameter groups and layer decay (optimizer), the
learning-rate schedules and the checks that they fit the run (schedules), and the frozen-encoder
warm-up of the first steps (encoder_warmup)."""
