"""model_io: our decoder, its weights and its sampler. Deals in token ids; knows nothing of prompts."""
from .checkpoint import export_hf, load_model, save_model
from .config import ModelConfig, ModelSpecError
from .kv_cache import KVCache
from .loading import load
from .logprobs import token_logprobs
from .model import Transformer
from .sampler import Prefix, SampleResult, SamplingConfig, decode, extend, generate, prefill

__all__ = [
    "ModelConfig", "ModelSpecError", "KVCache", "Transformer", "load", "save_model", "load_model", "export_hf",
    "token_logprobs", "SamplingConfig", "SampleResult", "Prefix", "prefill", "extend", "decode", "generate",
]
