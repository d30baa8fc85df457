"""Code shared by coordinator and workers: config, wire codec, chunking, serde, errors, gRPC options."""
