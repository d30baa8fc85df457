"""The fedtree worker: local data, a LoRA model, local training and the coordinator client."""
