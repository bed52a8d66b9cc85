"""The demo catalog: real models trained at start from scikit-learn's bundled datasets, and
(storefront/demo_tasks.py) real published models of the newer tasks where their packages are
installed."""

from __future__ import annotations

import base64
import io
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import moderation, publishing
from .demo_tasks import TASK_DEMOS
from .models import Account, Listing
from .security import hash_password

log = logging.getLogger(__name__)

DEMO_SELLER = "demo-seller@aimarket.local"
MODERATOR = "moderator@aimarket.local"


def _clf_onnx(clf: Any, X: np.ndarray) -> bytes:
    from skl2onnx import to_onnx

    model = to_onnx(clf, X[:1].astype(np.float32), options={id(clf): {"zipmap": False}})
    data: bytes = model.SerializeToString()
    return data


def digit_png(row: np.ndarray, scale: int = 8) -> str:
    """An 8x8 digits sample (0-16, light ink) as a base64 PNG of dark ink on white paper."""
    from PIL import Image

    pixels = (255 - np.asarray(row, dtype=np.float64).reshape(8, 8) * 255 / 16).astype(np.uint8)
    img = Image.fromarray(pixels, mode="L").resize((8 * scale, 8 * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _rows(data: Any, indices: tuple[int, ...], names: list[str] | None = None
          ) -> list[dict[str, float]]:
    """Example rows for a demo form, keyed by feature name."""
    names = names or list(data.feature_names)
    return [{n: round(float(v), 4) for n, v in zip(names, data.data[i], strict=True)}
            for i in indices]


IRIS_FEATURES = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def digits() -> tuple[bytes, dict[str, Any]]:
    from sklearn.datasets import load_digits
    from sklearn.neural_network import MLPClassifier

    X, y = load_digits(return_X_y=True)
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0)
    clf.fit(X.astype(np.float32), y)
    return _clf_onnx(clf, X), {
        "title": "Handwritten digits",
        "description": "Classifies 8x8 grayscale handwritten digits (0-9). A small MLP trained "
                       "on scikit-learn's digits dataset; send dark ink on a light background.",
        "category": "vision", "task": "image-classification",
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 64]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": [-1]},
                    {"name": "probabilities", "dtype": "float32", "shape": [-1, 10]}],
        "labels": [str(i) for i in range(10)],
        "preprocessing": {"size": [8, 8], "mode": "L", "scale": 0.0625, "invert": True},
        "pricing": {"per_call": "0.002", "trial_calls": 5, "export_price": "19.00"},
        "examples": [digit_png(X[i]) for i in (0, 1, 2, 3)],
    }


def iris() -> tuple[bytes, dict[str, Any]]:
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    clf = LogisticRegression(max_iter=500).fit(data.data, data.target)
    return _clf_onnx(clf, data.data), {
        "title": "Iris species",
        "description": "Tells setosa, versicolor and virginica irises apart from four flower "
                       "measurements in centimetres. Logistic regression on the iris dataset.",
        "category": "botany", "task": "tabular-classification",
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 4]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": [-1]},
                    {"name": "probabilities", "dtype": "float32", "shape": [-1, 3]}],
        "labels": [str(n) for n in data.target_names],
        "feature_names": IRIS_FEATURES,
        "pricing": {"per_call": "0.001", "trial_calls": 10, "export_price": "5.00",
                    "kit_price": "39.00"},
        "examples": _rows(data, (0, 50, 100), IRIS_FEATURES),
    }


def wine() -> tuple[bytes, dict[str, Any]]:
    from sklearn.datasets import load_wine
    from sklearn.ensemble import RandomForestClassifier

    data = load_wine()
    clf = RandomForestClassifier(n_estimators=50, max_depth=6, random_state=0)
    clf.fit(data.data, data.target)
    return _clf_onnx(clf, data.data), {
        "title": "Wine cultivar",
        "description": "Identifies which of three cultivars a wine comes from, from 13 results "
                       "of its chemical analysis. Random forest on the UCI wine dataset.",
        "category": "food", "task": "tabular-classification",
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 13]}],
        "outputs": [{"name": "label", "dtype": "int64", "shape": [-1]},
                    {"name": "probabilities", "dtype": "float32", "shape": [-1, 3]}],
        "labels": ["class_0", "class_1", "class_2"],
        "feature_names": list(data.feature_names),
        "pricing": {"per_call": "0.0015", "trial_calls": 10, "export_price": "8.00"},
        "examples": _rows(data, (0, 60, 130)),
    }


def diabetes() -> tuple[bytes, dict[str, Any]]:
    from skl2onnx import to_onnx
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    data = load_diabetes()
    reg = Ridge(alpha=0.1).fit(data.data, data.target)
    model = to_onnx(reg, data.data[:1].astype(np.float32))
    return model.SerializeToString(), {
        "title": "Diabetes progression",
        "description": "Predicts a quantitative measure of diabetes progression one year after "
                       "baseline from ten standardized features. Ridge regression.",
        "category": "health", "task": "tabular-regression",
        "inputs": [{"name": "X", "dtype": "float32", "shape": [-1, 10]}],
        "outputs": [{"name": "variable", "dtype": "float32", "shape": [-1, 1]}],
        "feature_names": list(data.feature_names),
        "pricing": {"per_call": "0.001", "trial_calls": 20, "export_price": "4.00"},
        "examples": _rows(data, (0, 1, 2)),
    }


def sample_row(name: str) -> list[float]:
    """The first example of the dataset a demo model was trained on."""
    from sklearn import datasets

    loader = {"digits": datasets.load_digits, "iris": datasets.load_iris,
              "wine": datasets.load_wine, "diabetes": datasets.load_diabetes}[name]
    return [float(v) for v in loader().data[0]]


DEMOS: dict[str, Callable[[], tuple[bytes, dict[str, Any]]]] = {
    "handwritten-digits": digits, "iris-species": iris, "wine-cultivar": wine,
    "diabetes-progression": diabetes,
}


def system_account(db: Session, email: str, role: str, name: str) -> Account:
    account = db.execute(select(Account).where(Account.email == email)).scalar_one_or_none()
    if account is None:
        # A random password nobody knows: the account cannot log in.
        account = Account(email=email, name=name, role=role,
                          password_hash=hash_password(secrets.token_urlsafe(32)))
        db.add(account)
        db.commit()
    return account


def seed(db: Session, settings: Any) -> list[tuple[Listing, Any]]:
    """Publish and approve each demo model not yet present. Returns what it approved."""
    seller = system_account(db, DEMO_SELLER, "seller", "aimarket demo")
    moderator = system_account(db, MODERATOR, "admin", "aimarket moderator")
    approved = []
    for slug, build in {**DEMOS, **TASK_DEMOS}.items():
        if db.execute(select(Listing.id).where(Listing.slug == slug)).first() is not None:
            continue
        built = build()
        if built is None:  # its package is not installed
            continue
        data, manifest = built
        published = publishing.publish(db, settings, seller, publishing.Submission(
            upload=data, manifest_text=json.dumps(manifest),
            license=manifest.get("license", "BSD-3-Clause"), attested=True, slug=slug))
        listing, lv = moderation.pending_version(db, published.slug, published.version)
        moderation.decide(db, listing, lv, moderator, "approve", "demo catalog, seeded at start")
        approved.append((listing, lv))
        log.info("seeded demo model %s", slug)
    return approved
