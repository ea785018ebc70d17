"""GPU preflight: the checks an operator runs on a new cluster before a long job (bertspeed preflight)."""
