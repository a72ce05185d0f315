"""OTLP receivers (HTTP and gRPC) and the pure decoder that turns OTLP into span rows."""
