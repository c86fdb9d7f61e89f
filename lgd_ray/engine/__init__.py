"""The Ray layer: the distill loop, the sampler actors, Ray Train students, evaluation tasks and the
output store. Imports `core`, never `tune`, `apps` or `cli`."""
