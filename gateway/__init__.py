"""The gRPC front door: validate, admit, dispatch to Celery, relay Redis streams, cancel, health.

Never imports torch; protobuf types stop at `gateway.convert`.
"""
