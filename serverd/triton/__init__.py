"""serverd's Triton: environment, NPU backend, model repository, supervisor and client."""
