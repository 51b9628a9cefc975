"""The OpenAI-compatible HTTP API, served by the gateway process beside gRPC.

A route turns the OpenAI-shaped JSON into the gRPC request message, calls the gateway's own servicer
with an `HttpCallContext` in place of gRPC's (so admission, auth, limits, dispatch, cancel and metrics
are the very ones gRPC calls go through, in the same process, never over the network), and turns the
reply or the stream of chunks into OpenAI's shapes. `app.HttpFrontDoor` runs it on uvicorn in the
gateway's event loop. Torch-free, like the rest of the gateway.
"""
