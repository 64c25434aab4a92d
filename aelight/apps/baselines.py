"""What an autoencoder's codes are measured against, on the same images: maps and codes that learn
no network. ``aelight reduce --baseline umap|tsne|pca`` and ``aelight features --baseline pixels|pca``
read them from here; each is fitted on training images only and then applied to the test images,
as an encoder is, so the comparison is inductive on both sides.

umap-learn and openTSNE come with aelight's ``baselines`` extra: ``pip install 'aelight[baselines]'``."""

import warnings

import numpy as np

from aelight.errors import AelightError

MAPS = ("umap", "tsne", "pca")  # aelight reduce --baseline
CODES = ("pixels", "pca")  # aelight features --baseline
# The neighbourhood of UMAPAE's configs (configs/apps/umap_2d*.yaml): n_neighbors 15, min_dist 0.1.
UMAP_SETTINGS = {"n_neighbors": 15, "min_dist": 0.1}
TSNE_PERPLEXITY = 30.0


def fitted_map(name: str, train: np.ndarray, test: np.ndarray, seed: int, components: int = 2):
    """``name``'s map fitted on ``train`` (rows: flattened training images), and the codes of
    ``train`` and of ``test`` (transformed by the fitted map, never fitted on)."""
    if name == "pca":
        from sklearn.decomposition import PCA

        pca = PCA(n_components=components, random_state=seed).fit(train)
        return pca.transform(train), pca.transform(test)
    if name == "umap":
        umap = _optional("umap", "umap-learn")
        with warnings.catch_warnings():  # a seeded UMAP runs on one thread, and says so
            warnings.filterwarnings("ignore", message="n_jobs value")
            reducer = umap.UMAP(n_components=components, random_state=seed, n_jobs=1, **UMAP_SETTINGS)
            train_codes = reducer.fit_transform(train)
            return train_codes, reducer.transform(test)
    if name == "tsne":
        open_tsne = _optional("openTSNE", "openTSNE")
        embedding = open_tsne.TSNE(
            n_components=components, perplexity=TSNE_PERPLEXITY, random_state=seed, n_jobs=-1
        ).fit(train)
        return np.asarray(embedding), np.asarray(embedding.transform(test))
    raise AelightError(f"--baseline {name}: not a map; choose one of {', '.join(MAPS)}")


def baseline_codes(name: str, train: np.ndarray, test: np.ndarray, fit_rows: int, components=None, seed: int = 0):
    """A linear probe's inputs without a network: the pixels themselves, or their principal
    components (``components`` of them) fitted on the first ``fit_rows`` training rows only (the
    training split; the validation split's rows come after them and are held out as a model's are)."""
    if name == "pixels":
        if components is not None:
            raise AelightError("--components is for --baseline pca; the pixels baseline keeps every pixel")
        return train.astype(np.float32), test.astype(np.float32)
    if name == "pca":
        if components is None:
            raise AelightError("--baseline pca needs --components N, the size of the code it stands against")
        from sklearn.decomposition import PCA

        pca = PCA(n_components=components, random_state=seed).fit(train[:fit_rows])
        return pca.transform(train).astype(np.float32), pca.transform(test).astype(np.float32)
    raise AelightError(f"--baseline {name}: choose one of {', '.join(CODES)}")


def map_baseline(name: str, seed: int, components: int):
    """``fitted_map`` as ``represent.codes`` calls a baseline: ``(train, test, val_count)``."""

    def codes(train: np.ndarray, test: np.ndarray, val_count: int):
        return fitted_map(name, train, test, seed, components)

    return codes


def code_baseline(name: str, components=None, seed: int = 0):
    """``baseline_codes`` as ``represent.codes`` calls a baseline, fitted before the validation rows."""

    def codes(train: np.ndarray, test: np.ndarray, val_count: int):
        return baseline_codes(name, train, test, len(train) - val_count, components, seed)

    return codes


def _optional(module: str, package: str):
    try:
        return __import__(module)
    except ImportError:
        raise AelightError(
            f"this baseline needs {package}, which is not installed; install aelight's baselines extra: "
            "pip install 'aelight[baselines]'"
        ) from None
