"""The generated protobuf messages (`pb`) and gRPC stubs/servicers (`pb_grpc`) of bailing.v1."""

from gateway.protos import load

pb = load("inference_pb2")
pb_grpc = load("inference_pb2_grpc")

INFERENCE_SERVICE = pb.DESCRIPTOR.services_by_name["Inference"].full_name  # "bailing.v1.Inference"
JOBS_SERVICE = pb.DESCRIPTOR.services_by_name["Jobs"].full_name  # "bailing.v1.Jobs"
# The sampling fields with explicit presence (`optional` in the proto): unset means "model default".
OPTIONAL_SAMPLING_FIELDS = tuple(f.name for f in pb.SamplingParams.DESCRIPTOR.fields if f.has_presence)

__all__ = ["INFERENCE_SERVICE", "JOBS_SERVICE", "OPTIONAL_SAMPLING_FIELDS", "pb", "pb_grpc"]
