"""The generated protobuf messages (`pb`) and gRPC stubs/servicers (`pb_grpc`) of bailing.v1."""

from gateway.protos import load

pb = load("inference_pb2")
pb_grpc = load("inference_pb2_grpc")

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # "bailing.v1.Inference"

__all__ = ["INFERENCE_SERVICE", "pb", "pb_grpc"]
