"""Test helper: a Google-BERT-style TF1 checkpoint written by TensorFlow itself, and the forward pass of
Google's modeling.py written in TensorFlow ops (float64) as the independent reference."""
from __future__ import annotations

import json

import numpy as np
import tensorflow as tf

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "Apple", "apple", "The", "the", "pie", "is", "good", ".",
         "##s", "Paris", "paris", "a", "A"] + [f"w{i}" for i in range(30)]
CONFIG = dict(vocab_size=len(VOCAB), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=37, max_position_embeddings=40, type_vocab_size=2, hidden_act="gelu",
              hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1, initializer_range=0.02)
HEADS = {"pretraining": {"cls/predictions/transform/dense/kernel": ("H", "H"), "cls/predictions/transform/dense/bias":
                         ("H",), "cls/predictions/transform/LayerNorm/gamma": ("H",),
                         "cls/predictions/transform/LayerNorm/beta": ("H",), "cls/predictions/output_bias": ("V",),
                         "cls/seq_relationship/output_weights": (2, "H"), "cls/seq_relationship/output_bias": (2,)},
         "squad": {"cls/squad/output_weights": (2, "H"), "cls/squad/output_bias": (2,)},
         "classifier": {"output_weights": (3, "H"), "output_bias": (3,)},
         "encoder": {}}


def variable_shapes(head: str, config=CONFIG) -> dict[str, tuple]:
    sizes = {"H": config["hidden_size"], "I": config["intermediate_size"], "V": config["vocab_size"]}
    shapes = {"bert/embeddings/word_embeddings": ("V", "H"),
              "bert/embeddings/token_type_embeddings": (config["type_vocab_size"], "H"),
              "bert/embeddings/position_embeddings": (config["max_position_embeddings"], "H"),
              "bert/embeddings/LayerNorm/gamma": ("H",), "bert/embeddings/LayerNorm/beta": ("H",),
              "bert/pooler/dense/kernel": ("H", "H"), "bert/pooler/dense/bias": ("H",)}
    for n in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{n}"
        for dense, (i, o) in {"attention/self/query": "HH", "attention/self/key": "HH", "attention/self/value": "HH",
                              "attention/output/dense": "HH", "intermediate/dense": "HI", "output/dense": "IH"}.items():
            shapes[f"{p}/{dense}/kernel"], shapes[f"{p}/{dense}/bias"] = (i, o), (o,)
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{p}/{norm}/gamma"], shapes[f"{p}/{norm}/beta"] = ("H",), ("H",)
    shapes.update(HEADS[head])
    return {k: tuple(sizes.get(d, d) for d in v) for k, v in shapes.items()}


def random_variables(head: str, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, shape in variable_shapes(head).items():
        value = rng.normal(0.0, 0.3, shape)
        out[name] = (1.0 + value if name.endswith("gamma") else value).astype(np.float32)
    return out


def write_checkpoint(folder, head: str, seed: int = 0) -> dict[str, np.ndarray]:
    """bert_model.ckpt.{index,data-00000-of-00001,meta} with Adam slots and global_step, bert_config.json,
    vocab.txt, as in Google's releases and finetuning outputs."""
    values = random_variables(head, seed)
    folder.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        var_list = {name: tf.compat.v1.Variable(v, name=name) for name, v in values.items()}
        for name, v in values.items():
            for slot in ("adam_m", "adam_v"):
                var_list[f"{name}/{slot}"] = tf.compat.v1.Variable(np.full_like(v, 0.5), name=f"{name}/{slot}")
        var_list["global_step"] = tf.compat.v1.Variable(np.int64(1000), name="global_step")
        saver = tf.compat.v1.train.Saver(var_list)
        with tf.compat.v1.Session() as session:
            session.run(tf.compat.v1.global_variables_initializer())
            saver.save(session, str(folder / "bert_model.ckpt"))
    (folder / "bert_config.json").write_text(json.dumps(CONFIG))
    (folder / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return values


def forward(prefix, input_ids, token_type_ids, attention_mask, head: str, config=CONFIG) -> dict[str, np.ndarray]:
    """Google's modeling.py in TF ops over the checkpoint as TensorFlow reads it, in float64."""
    reader = tf.train.load_checkpoint(str(prefix))

    def w(name):
        return tf.constant(reader.get_tensor(name), dtype=tf.float64)

    def dense(x, name):
        return tf.einsum("...i,io->...o", x, w(f"{name}/kernel")) + w(f"{name}/bias")

    def layer_norm(x, name):
        mean, var = tf.nn.moments(x, axes=[-1], keepdims=True)
        return (x - mean) * tf.math.rsqrt(var + 1e-12) * w(f"{name}/gamma") + w(f"{name}/beta")

    def gelu(x):  # modeling.py: the tanh approximation
        return 0.5 * x * (1.0 + tf.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * tf.pow(x, 3))))

    batch, length = input_ids.shape
    heads = config["num_attention_heads"]
    size = config["hidden_size"] // heads
    x = (tf.gather(w("bert/embeddings/word_embeddings"), input_ids)
         + tf.gather(w("bert/embeddings/token_type_embeddings"), token_type_ids)
         + w("bert/embeddings/position_embeddings")[:length])
    x = layer_norm(x, "bert/embeddings/LayerNorm")
    adder = (1.0 - tf.cast(attention_mask[:, None, None, :], tf.float64)) * -10000.0
    hidden = [x]
    for n in range(config["num_hidden_layers"]):
        p = f"bert/encoder/layer_{n}"
        q, k, v = (tf.transpose(tf.reshape(dense(x, f"{p}/attention/self/{m}"), [batch, length, heads, size]),
                                [0, 2, 1, 3]) for m in ("query", "key", "value"))
        probs = tf.nn.softmax(tf.matmul(q, k, transpose_b=True) / np.sqrt(size) + adder)
        context = tf.reshape(tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3]), [batch, length, heads * size])
        x = layer_norm(dense(context, f"{p}/attention/output/dense") + x, f"{p}/attention/output/LayerNorm")
        x = layer_norm(dense(gelu(dense(x, f"{p}/intermediate/dense")), f"{p}/output/dense") + x,
                       f"{p}/output/LayerNorm")
        hidden.append(x)
    pooled = tf.tanh(dense(x[:, 0], "bert/pooler/dense"))
    out = {"hidden_states": [h.numpy() for h in hidden], "pooled": pooled.numpy()}
    if head == "pretraining":
        t = layer_norm(gelu(dense(x, "cls/predictions/transform/dense")), "cls/predictions/transform/LayerNorm")
        out["prediction_logits"] = (tf.matmul(t, w("bert/embeddings/word_embeddings"), transpose_b=True)
                                    + w("cls/predictions/output_bias")).numpy()
        out["seq_relationship_logits"] = (tf.matmul(pooled, w("cls/seq_relationship/output_weights"),
                                                    transpose_b=True) + w("cls/seq_relationship/output_bias")).numpy()
    elif head == "squad":
        logits = tf.einsum("bth,kh->kbt", x, w("cls/squad/output_weights")) + w("cls/squad/output_bias")[:, None, None]
        out["start_logits"], out["end_logits"] = logits[0].numpy(), logits[1].numpy()
    elif head == "classifier":
        out["logits"] = (tf.matmul(pooled, w("output_weights"), transpose_b=True) + w("output_bias")).numpy()
    return out


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block(entries, crc32c_masked) -> bytes:
    body = b"".join(_varint(0) + _varint(len(k)) + _varint(len(v)) + k + v for k, v in entries)
    body += (0).to_bytes(4, "little") + (1).to_bytes(4, "little")  # one restart point, at 0
    return body + b"\x00" + crc32c_masked(body + b"\x00").to_bytes(4, "little")


def rewrite_index(path, change, crc32c_masked):
    """Rewrite a checkpoint .index as one uncompressed data block (a layout TensorFlow reads) after
    `change(name, BundleEntryProto)` edits entries; the old entries are parsed with TF's own protobuf."""
    from tensorflow.core.protobuf import tensor_bundle_pb2

    from bertspeed.model.tf_checkpoint import _block_entries  # raw (key, value) pairs
    from bertspeed.model.tf_checkpoint import _varint as read_varint
    data = path.read_bytes()
    footer = data[-48:]
    _, pos = read_varint(footer, read_varint(footer, 0)[1])
    index_offset, pos = read_varint(footer, pos)
    index_size, _ = read_varint(footer, pos)
    items = []
    for _, handle in _block_entries(data[index_offset:index_offset + index_size]):
        offset, pos = read_varint(handle, 0)
        items += _block_entries(data[offset:offset + read_varint(handle, pos)[0]])
    entries = []
    for key, value in items:
        if key:
            entry = tensor_bundle_pb2.BundleEntryProto.FromString(value)
            change(key.decode(), entry)
            value = entry.SerializeToString()
        entries.append((key, value))
    block = _block(entries, crc32c_masked)
    meta = _block([], crc32c_masked)
    index = _block([(entries[-1][0], _varint(0) + _varint(len(block) - 5))], crc32c_masked)
    handles = _varint(len(block)) + _varint(len(meta) - 5) + _varint(len(block) + len(meta)) + _varint(len(index) - 5)
    magic = (0xDB4775248B80FB57).to_bytes(8, "little")
    path.write_bytes(block + meta + index + handles.ljust(40, b"\x00") + magic)
