"""Structured output: a request's tokens held to a grammar (JSON schema, regex, Lark) while it decodes.

The grammar engine is llguidance (a Rust library with an abi3 wheel and no dependencies): it computes
the token mask of a grammar state lazily from the tokenizer's trie in tens of microseconds, with no
ahead-of-time compile per schema (xgrammar, the other well-kept choice, compiles each grammar first and
pulls in torch/transformers/triton of its own), and releases the GIL while it works, so masks can be
computed on a side thread while the model runs its forward.

Flow: a pipeline turns the request's response format into a grammar string (`grammars`) -> the
engine's `StructuredOutput.constraint(grammar, gate)` makes a `GrammarConstraint` per sample (it rides
on `SamplingParams.constraint`) -> each step `MaskPrefetcher` hands the sampler one bitmask row per
constrained sample (computed during the forward when it could be) -> the disallowed logits become
-inf before sampling -> the sampled token advances the sample's matcher, and its next mask starts.
"""
