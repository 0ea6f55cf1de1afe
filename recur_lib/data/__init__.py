"""Token data: shards, the tokenizer, the loader, bpb accounting, and `open_data` that ties them to a
config. The corpus build (text -> tokenizer + shards) lives in `data.corpus`."""
from .bpb import AuditReport, ByteTables, audit_split, audit_tokens, bpb, build_byte_tables, count_bytes
from .dataset import Data, DataError, open_data
from .loader import DistributedTokenLoader, TokenStream, load_tokens, trim_for_eval
from .shards import ShardError, read_shard, write_shard
from .tokenizer import TokenizerError, encode_documents, load_tokenizer, train_tokenizer

__all__ = [
    "Data", "DataError", "open_data", "ShardError", "read_shard", "write_shard", "TokenStream", "DistributedTokenLoader",
    "load_tokens", "trim_for_eval", "TokenizerError", "load_tokenizer", "train_tokenizer", "encode_documents",
    "ByteTables", "build_byte_tables", "count_bytes", "bpb", "AuditReport", "audit_tokens", "audit_split",
]
