"""recur_lib: depth-recurrent transformers under the Parameter Golf rules.

The public API, small on purpose:

    from recur_lib import Config, build_model, open_data, bpb
    cfg = Config.from_name("quick", model__dim=256)
    print(build_model(cfg).describe())
"""
__version__ = "0.1.0"

from .bpb import AuditReport, ByteTables, audit_split, audit_tokens, bpb, build_byte_tables, count_bytes
from .config import PRESETS, Config, ConfigError, all_keys, describe_fields, preset_names
from .data import Data, open_data
from .model import RecurGPT, build_model, build_schedule
from .loader import DistributedTokenLoader, TokenStream, load_tokens, trim_for_eval
from .shards import ShardError, read_shard, write_shard
from .tokenizer import TokenizerError, encode_documents, load_tokenizer, train_tokenizer

__all__ = [
    "__version__", "Config", "ConfigError", "PRESETS", "preset_names", "all_keys", "describe_fields",
    "Data", "open_data", "RecurGPT", "build_model", "build_schedule", "ShardError", "read_shard", "write_shard",
    "TokenStream", "DistributedTokenLoader", "load_tokens", "trim_for_eval",
    "TokenizerError", "load_tokenizer", "train_tokenizer", "encode_documents",
    "ByteTables", "build_byte_tables", "count_bytes", "bpb", "AuditReport", "audit_tokens", "audit_split",
]
