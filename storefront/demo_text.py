"""Demo-catalog text listings trained at start on the Python language reference that ships with
every CPython (``pydoc_data.topics``): a WordPiece tokenizer trained with ``tokenizers`` (shipped
as tokenizer.json beside each model), a naive-Bayes question router and word vectors (positive
PMI of co-occurrences, truncated SVD, IDF-weighted), both as plain ONNX graphs over token ids."""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
from onnx import TensorProto, helper

from .demo_built import Built, _graph, archive

# the reference's topics, grouped by what a question is about
ROUTES: dict[str, tuple[str, ...]] = {
    "errors and exceptions": ("try", "raise", "exceptions", "assert"),
    "loops and conditions": ("for", "while", "if", "break", "continue", "else", "booleans",
                             "truth", "in"),
    "functions": ("function", "calls", "lambda", "return", "yield", "typesfunctions", "async",
                  "await"),
    "classes and objects": ("class", "customization", "attribute-access", "objects",
                            "specialattrs", "id-classes", "attribute-references"),
    "strings and formatting": ("strings", "string-methods", "formatstrings"),
    "numbers and arithmetic": ("numeric-types", "integers", "floating", "imaginary", "numbers",
                               "binary", "power", "unary", "bitwise", "shifting"),
    "lists, dicts and sequences": ("typesseq", "typesmapping", "dict", "lists",
                                   "sequence-types", "typesseq-mutable", "slicings",
                                   "subscriptions"),
    "modules and scopes": ("import", "naming", "global", "nonlocal", "typesmodules"),
    "debugging": ("debugger",),
    "context managers": ("with", "context-managers"),
}
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
MAX_TOKENS = 128
PRICING = {"per_call": "0.0005", "trial_calls": 20, "export_price": "4.00"}


def _topics() -> dict[str, str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:  # a Python built without its docs: no text listings
        return {}
    return dict(topics)


def _paragraphs(text: str) -> list[str]:
    return [p for p in text.split("\n\n") if p.strip()]


@cache
def _tokenizer() -> Any:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(list(_topics().values()), trainers.WordPieceTrainer(
        vocab_size=6000, special_tokens=SPECIAL, show_progress=False))
    return tok


def _token_inputs() -> list[Any]:
    return [helper.make_tensor_value_info(n, TensorProto.INT64, ["N", "T"])
            for n in ("input_ids", "attention_mask")]


def _text_manifest(title: str, description: str, task: str, output: dict[str, Any],
                   examples: list[str], **extra: Any) -> dict[str, Any]:
    return {"title": title, "description": description, "category": "text", "task": task,
            "inputs": [{"name": n, "dtype": "int64", "shape": [-1, -1]}
                       for n in ("input_ids", "attention_mask")],
            "outputs": [output],
            "text": {"max_length": MAX_TOKENS,
                     "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask"}},
            "pricing": PRICING, "license": "PSF-2.0", "max_batch": 32, "examples": examples,
            **extra}


@cache
def python_question_router() -> Built | None:
    if not _topics():
        return None
    tok, topics = _tokenizer(), _topics()
    vocab, labels = tok.get_vocab_size(), list(ROUTES)
    counts = np.ones((vocab, len(labels)))  # Laplace smoothing
    for c, route in enumerate(labels):
        for topic in ROUTES[route]:
            for enc in tok.encode_batch(_paragraphs(topics[topic])):
                np.add.at(counts[:, c], enc.ids, 1)
    loglik = np.log(counts / counts.sum(axis=0, keepdims=True))
    loglik -= loglik.mean(axis=1, keepdims=True)  # only differences between routes count
    loglik[:len(SPECIAL)] = 0
    n = helper.make_node
    nodes = [
        n("Gather", ["loglik", "input_ids"], ["per_token"]),
        n("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mask", "ax2"], ["mask3"]), n("Mul", ["per_token", "mask3"], ["kept"]),
        n("ReduceSum", ["kept", "ax1"], ["logits"], keepdims=0),
        n("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    data = _graph("python-question-router", nodes, _token_inputs(),
                  [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT,
                                                 ["N", len(labels)])],
                  {"loglik": loglik.astype(np.float32), "ax1": np.asarray([1], np.int64),
                   "ax2": np.asarray([2], np.int64)})
    return archive({"model.onnx": data, "tokenizer.json": tok.to_str()}), _text_manifest(
        "Python question router",
        "Routes a question about Python to the part of the language it is about (errors, "
        "loops, functions, classes, strings, numbers, containers, modules, debugging, "
        "context managers): naive Bayes over the Python language reference that ships with "
        "CPython, with a WordPiece tokenizer trained on it (tokenizer.json in the archive).",
        "text-classification",
        {"name": "probabilities", "dtype": "float32", "shape": [-1, len(labels)]},
        ["How do I catch an exception and print its message?",
         "Format a float with two decimals in an f-string"], labels=labels)


@cache
def python_doc_embeddings() -> Built | None:
    if not _topics():
        return None
    from scipy import sparse
    from sklearn.utils.extmath import randomized_svd

    tok = _tokenizer()
    vocab = tok.get_vocab_size()
    docs = [np.asarray(e.ids) for text in _topics().values()
            for e in tok.encode_batch(_paragraphs(text))]
    left = [ids[:-d] for ids in docs for d in range(1, 5) if len(ids) > d]
    right = [ids[d:] for ids in docs for d in range(1, 5) if len(ids) > d]
    rows, cols = np.concatenate(left + right), np.concatenate(right + left)
    co = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(vocab, vocab)).tocsr()
    co = co.tocoo()
    total = co.data.sum()
    row_sum = np.bincount(co.row, co.data, vocab)
    col_sum = np.bincount(co.col, co.data, vocab) ** 0.75  # context smoothing
    col_sum *= total / col_sum.sum()
    pmi = np.log(co.data * total / (row_sum[co.row] * col_sum[co.col]))
    keep = pmi > 0
    ppmi = sparse.csr_matrix((pmi[keep], (co.row[keep], co.col[keep])), shape=(vocab, vocab))
    u, s, _ = randomized_svd(ppmi, 64, random_state=0)
    vectors = u * np.sqrt(s)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-9)
    df = np.zeros(vocab)
    for ids in docs:
        df[np.unique(ids)] += 1
    vectors *= np.log((len(docs) + 1) / (df + 1))[:, None]  # rare words weigh more
    vectors[:len(SPECIAL)] = 0
    n = helper.make_node
    nodes = [
        n("Gather", ["vectors", "input_ids"], ["per_token"]),
        n("Cast", ["attention_mask"], ["mask"], to=TensorProto.FLOAT),
        n("Unsqueeze", ["mask", "ax2"], ["mask3"]),
        n("Mul", ["per_token", "mask3"], ["token_embeddings"]),
    ]
    dims = vectors.shape[1]
    data = _graph("python-doc-embeddings", nodes, _token_inputs(),
                  [helper.make_tensor_value_info("token_embeddings", TensorProto.FLOAT,
                                                 ["N", "T", dims])],
                  {"vectors": vectors.astype(np.float32), "ax2": np.asarray([2], np.int64)})
    return archive({"model.onnx": data, "tokenizer.json": tok.to_str()}), _text_manifest(
        "Python doc embeddings",
        f"{dims}-dimensional sentence embeddings for text about programming: word vectors of "
        "the Python language reference that ships with CPython (positive PMI of words within "
        "four tokens, truncated SVD, IDF-weighted), mean pooled and normalised. Compare two "
        "texts by cosine similarity.",
        "text-embedding",
        {"name": "token_embeddings", "dtype": "float32", "shape": [-1, -1, dims]},
        ["catch an exception", "handle an error raised in a try block"],
        embedding={"pooling": "mean", "normalize": True})


__all__ = ["ROUTES", "python_doc_embeddings", "python_question_router"]
