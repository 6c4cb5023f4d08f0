"""The GPU fast path of sampling, beside the method: a graph-captured static-cache decode loop for
Qwen2/Qwen3 (`fast_rollout`), its layer math and sampler (`decode_layers`) and a Triton split-KV
decode-attention kernel (`decode_attention`). `rollout.sample` uses it on CUDA; nothing of the
method (δS, V, projection, GRPO) lives here."""
