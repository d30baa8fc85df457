"""The fedtree coordinator: gRPC servicers over a round engine, strategies and a state store."""
