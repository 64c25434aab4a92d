"""How codes are scored: the 5-nearest-neighbour accuracy (``aelight reduce``) and the linear probe
with its regularisation chosen on the validation split (``aelight features``), by scikit-learn."""

import numpy as np


def knn_accuracy(train_codes, train_labels, test_codes, test_labels, k: int = 5) -> float:
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(n_neighbors=k).fit(train_codes, train_labels).score(test_codes, test_labels))


def logistic_predictions(train_codes, train_labels, test_codes, max_iter: int = 1000, C: float = 1.0) -> np.ndarray:
    """Test-set labels predicted by a multinomial logistic regression (lbfgs, inverse regularisation
    strength ``C``) on standardised codes. The codes are standardised in place: wide features (tens
    of thousands per image for 60,000 images) are held once."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(copy=False), LogisticRegression(max_iter=max_iter, C=C))
    return clf.fit(train_codes, train_labels).predict(test_codes)


def chosen_C(
    train_codes: np.ndarray, train_labels: np.ndarray, val_count: int, Cs: list[float], max_iter: int
) -> tuple[float, dict[float, float]]:
    """The regularisation of best validation accuracy (the first listed on a tie), and each one's
    accuracy: fitted on the codes before the last ``val_count`` rows, scored on those rows. The
    test set plays no part."""
    fit_codes, fit_labels = train_codes[:-val_count], train_labels[:-val_count]
    val_codes, val_labels = train_codes[-val_count:], train_labels[-val_count:]
    accuracies = {}
    for C in Cs:  # copies: the probe standardises its inputs in place
        predicted = logistic_predictions(fit_codes.copy(), fit_labels, val_codes.copy(), max_iter, C)
        accuracies[C] = float((predicted == val_labels).mean())
    return max(Cs, key=accuracies.__getitem__), accuracies
