#!/usr/bin/env python3
"""Writes tests/fixtures/solve/solvers.json: small kernel problems and what the reference solver
pipeline (LM-Kernel-FT `src/kernel_solvers.py` + `KernelTrainerFunc.evaluate`, re-typed here with
torch and scikit-learn) reports for them. `cargo test --test solve` writes each problem as a kernel
HDF5 file, runs `mezo solve`, and compares; no Python is needed there.

    .venv/bin/python scripts/make_solver_fixture.py

Problems (all seeded): "binary" (sst-2, C = 1, sgd), "multi" (snli, C = 3, sgd), "mrpc" (binary,
F1 + accuracy), "cola" (binary, MCC) and "asym" (sst-2, asymmetric_signgd). Kernels are made from
random "gradients" g_c(x) in R^P whose mean depends on the class, as ⟨g, g'⟩ (sgd) or
⟨sign g, g'⟩ (asymmetric), so they have the structure of real ones. Each problem also carries f0.

The reference used scikit-learn 0.24; this script pins the version scripts/setup.sh installs.
LogisticRegressionCV's fold assignment, Cs, tie rule and objective are the same in both, but where
L-BFGS stops is not (0.24 also stops on a relative decrease of 2.2e-9; 1.2 and later scale the loss
by 1/n before applying gtol), and on nearly separable folds at large C that changes fold scores.
So the logistic reference here is LogisticRegressionCV run to convergence (tol=1e-8), the optimum
that every version approximates and `mezo solve` reaches; the test compares decisions with a
tolerance.
"""
import json
import os

import numpy as np
import sklearn
import torch
from sklearn.linear_model import LogisticRegressionCV
from sklearn.metrics import f1_score, matthews_corrcoef
from sklearn.svm import SVC, SVR

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "solve", "solvers.json")
# LogisticRegressionCV's tol: converged, see the module doc.
LOGISTIC_TOL = 1e-8


def gradients(rng, labels, outputs, dims, centers):
    """g_c(x) for every example: class center of output c plus noise, [N, C, P]."""
    g = rng.normal(size=(len(labels), outputs, dims))
    for i, label in enumerate(labels):
        g[i] += centers[label]
    return g


def kernel(left, right, formula):
    """[N, C, M, C] (sgd) or [2, N, C, M, C] (asymmetric_signgd)."""
    if formula == "sgd":
        return np.einsum("ncp,mdp->ncmd", left, right)
    k0 = np.einsum("ncp,mdp->ncmd", np.sign(left), right)
    k1 = np.einsum("ncp,mdp->ncmd", left, np.sign(right))
    return np.stack([k0, k1])


def flat(k):
    n, c, m, _ = k.shape
    return torch.tensor(k.reshape(n * c, m * c))


def targets(labels, outputs, binary):
    labels = torch.tensor(labels)
    if binary:
        return (labels * 2 - 1).double()
    return torch.nn.functional.one_hot(labels, outputs).double().reshape(-1)


def regularized(k, reg):
    if not reg:
        return k
    s = torch.svd(k)[1].max()
    return k + torch.eye(k.shape[0], dtype=k.dtype) * (reg * s)


def metrics(task, preds, labels, outputs):
    preds = preds.reshape(-1, outputs)
    if outputs == 1:
        predicted = (torch.cat([-preds, preds], dim=1)).argmax(-1).numpy()
    else:
        predicted = preds.argmax(-1).numpy()
    labels = np.asarray(labels)
    acc = float((predicted == labels).mean())
    if task in ("mrpc", "qqp"):
        f1 = float(f1_score(labels, predicted))
        return {"eval_acc": acc, "eval_f1": f1, "eval_acc_and_f1": (acc + f1) / 2}
    if task == "cola":
        return {"eval_mcc": float(matthews_corrcoef(labels, predicted))}
    if task == "snli":
        return {"eval_acc": acc}
    return {"eval_acc": acc}


def reference(problem, solver, reg, f0_scaling=None, gamma=1.0, lam=0.5):
    """The reference evaluate() for dev and test: {split: metrics}."""
    c = problem["outputs"]
    binary = c == 1
    asym = problem["formula"] == "asymmetric_signgd"
    ktr = np.asarray(problem["kernels"]["train"])
    k = flat(ktr[0] if asym else ktr)
    y = targets(problem["labels"]["train"], c, binary)
    k = regularized(k, reg)
    f0 = {s: torch.tensor(np.asarray(problem["f0"][s]).reshape(-1)) for s in problem["f0"]}
    adjust = f0_scaling is not None and f0_scaling > 0
    out = {}
    for split in ("dev", "test"):
        kx_all = np.asarray(problem["kernels"][split])
        kx = flat(kx_all[0] if asym else kx_all)
        yx = targets(problem["labels"][split], c, binary)
        m = {}
        if solver == "lstsq":
            yt = y.clone()
            if adjust:
                yt = yt - f0["train"] / f0_scaling
            sol, _, rank, _ = torch.linalg.lstsq(k, yt[:, None], driver="gelsy")
            preds = (kx.t() @ sol)[:, 0]
            m["rank0"] = int(rank)
        elif solver == "asym":
            yt = y.clone()
            if adjust:
                yt = yt - f0["train"] / f0_scaling
            n = k.shape[0]
            h = torch.zeros(k.shape)
            for i in range(n):
                for j in range(n):
                    h[i, j] = yt[i] * (k[i, j] * yt[j])
            a = torch.zeros(2 * n, 2 * n, dtype=torch.float64)
            a[:n, :n] = torch.eye(n) / gamma
            a[:n, n:] = h
            a[n:, :n] = h.T
            a[n:, n:] = torch.eye(n) / gamma
            sol, _, rank, _ = torch.linalg.lstsq(a, torch.ones(2 * n, 1, dtype=torch.float64), driver="gelsy")
            alpha, beta = sol[:n, 0], sol[n:, 0]
            flipped = flat(kx_all[1])
            preds = lam * (kx.t() @ (alpha * yt)) + (1 - lam) * (flipped.t() @ (beta * yt))
            m["rank0"] = int(rank)
        elif solver == "svr":
            yt = y.clone()
            if adjust:
                yt = yt - f0["train"] / f0_scaling
            svm = SVR(kernel="precomputed").fit(k.numpy(), yt.numpy())
            preds = torch.tensor(svm.predict(kx.t().numpy()))
        elif solver == "svc":
            svm = SVC(kernel="precomputed").fit(k.numpy(), ((y + 1) / 2).int().numpy())
            preds = torch.tensor(svm.predict(kx.t().numpy())).double() * 2 - 1
        elif solver == "logistic":
            model = LogisticRegressionCV(max_iter=10000, random_state=0, tol=LOGISTIC_TOL)
            model.fit(k.numpy(), ((y + 1) / 2).int().numpy())
            log_proba = torch.tensor(model.predict_log_proba(kx.t().numpy()))
            m["eval_loss"] = float(torch.nn.functional.cross_entropy(log_proba, ((yx + 1) / 2).long()))
            m["logistic_C"] = float(model.C_[0])
            preds = log_proba[:, 1] - log_proba[:, 0]
        if adjust and solver != "logistic":
            preds = preds + f0[split] / f0_scaling
        if solver != "logistic":
            m["eval_loss"] = float(((preds - yx) ** 2).mean())
        m.update(metrics(problem["task"], preds, problem["labels"][split], c))
        out[split] = m
    return out


def logistic_detail(problem):
    """Everything LogisticRegressionCV decided on the train kernel rows, for a direct comparison."""
    c = problem["outputs"]
    ktr = np.asarray(problem["kernels"]["train"])
    k = flat(ktr)
    y = targets(problem["labels"]["train"], c, c == 1)
    classes = ((y + 1) / 2).int().numpy()
    model = LogisticRegressionCV(max_iter=10000, random_state=0, tol=LOGISTIC_TOL).fit(k.numpy(), classes)
    kx = flat(np.asarray(problem["kernels"]["dev"]))
    return {
        "classes": classes.tolist(),
        "scores": model.scores_[1].tolist(),
        "C": float(model.C_[0]),
        "coef": model.coef_[0].tolist() + [float(model.intercept_[0])],
        "dev_decision": model.decision_function(kx.t().numpy()).tolist(),
    }


def make_problem(seed, task, outputs, formula, n_per_class, dev_per_class, test_size, dims, spread):
    rng = np.random.default_rng(seed)
    classes = 2 if outputs == 1 else outputs
    centers = rng.normal(scale=spread, size=(classes, outputs, dims))
    train_labels = np.repeat(np.arange(classes), n_per_class)
    rng.shuffle(train_labels)
    dev_labels = np.repeat(np.arange(classes), dev_per_class)
    rng.shuffle(dev_labels)
    test_labels = rng.integers(0, classes, size=test_size)
    g = {s: gradients(rng, l, outputs, dims, centers)
         for s, l in (("train", train_labels), ("dev", dev_labels), ("test", test_labels))}
    problem = {
        "task": task,
        "formula": formula,
        "outputs": outputs,
        "grad_dim": dims,
        "labels": {"train": train_labels.tolist(), "dev": dev_labels.tolist(), "test": test_labels.tolist()},
        "kernels": {s: kernel(g["train"], g[s], formula).tolist() for s in g},
        "f0": {s: rng.normal(scale=0.5, size=(len(l), outputs)).tolist()
               for s, l in (("train", train_labels), ("dev", dev_labels), ("test", test_labels))},
    }
    return problem


def main():
    problems = {
        "binary": make_problem(1, "sst-2", 1, "sgd", 8, 8, 20, 40, 0.4),
        "multi": make_problem(2, "snli", 3, "sgd", 5, 4, 15, 60, 0.5),
        "mrpc": make_problem(3, "mrpc", 1, "sgd", 8, 8, 20, 40, 0.3),
        "cola": make_problem(4, "cola", 1, "sgd", 8, 8, 20, 12, 0.3),
        "asym": make_problem(5, "sst-2", 1, "asymmetric_signgd", 8, 8, 20, 40, 0.4),
    }
    cases = []
    for name, solvers in (
        ("binary", ["lstsq", "logistic", "svr", "svc"]),
        ("multi", ["lstsq", "logistic", "svr", "svc"]),
        ("mrpc", ["lstsq", "svr"]),
        ("cola", ["lstsq", "svc"]),
        ("asym", ["asym", "lstsq"]),
    ):
        for solver in solvers:
            for reg in (0.0, 0.1):
                cases.append({"problem": name, "solver": solver, "reg": reg,
                              "expected": reference(problems[name], solver, reg)})
        if "svc" not in solvers or name == "binary":
            adjust_solver = "asym" if name == "asym" else "lstsq"
            cases.append({"problem": name, "solver": adjust_solver, "reg": 0.01, "f0_scaling": 2.0,
                          "expected": reference(problems[name], adjust_solver, 0.01, f0_scaling=2.0)})
    cases.append({"problem": "binary", "solver": "svr", "reg": 0.0, "f0_scaling": 1.0,
                  "expected": reference(problems["binary"], "svr", 0.0, f0_scaling=1.0)})
    cases.append({"problem": "asym", "solver": "asym", "reg": 0.0, "kernel_gamma": 0.5, "kernel_lambda": 0.25,
                  "expected": reference(problems["asym"], "asym", 0.0, gamma=0.5, lam=0.25)})
    fixture = {
        "generator": "scripts/make_solver_fixture.py",
        "versions": {"scikit-learn": sklearn.__version__, "torch": torch.__version__.split("+")[0]},
        "problems": problems,
        "cases": cases,
        "logistic": {name: logistic_detail(problems[name]) for name in ("binary", "multi")},
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(fixture, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} cases")


if __name__ == "__main__":
    main()
