"""Learning-rate policies: Caffe's SGDSolver::GetLearningRate as one pure function.

``iter`` is the number of updates done so far. ``current_step`` is the
solver's step counter (saved in the .solverstate): ``step`` recomputes it,
``multistep`` advances it by at most one per call, as Caffe does.

    fixed      base_lr
    step       base_lr * gamma ^ floor(iter / stepsize)
    exp        base_lr * gamma ^ iter
    inv        base_lr * (1 + gamma * iter) ^ (-power)
    multistep  base_lr * gamma ^ (number of stepvalues reached)
    poly       base_lr * (1 - iter / max_iter) ^ power
    sigmoid    base_lr / (1 + exp(-gamma * (iter - stepsize)))
"""
import logging
import math

import numpy as np

from .errors import SolverError

log = logging.getLogger("jcaffe")

POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def check_policy(param):
    """Raise SolverError for a policy Caffe would refuse (checked once, up front)."""
    policy = param.lr_policy
    if not policy:
        raise SolverError("lr_policy is not set (Caffe has no default); add e.g. "
                          "lr_policy: \"fixed\" to the solver")
    if policy not in POLICIES:
        raise SolverError("Unknown learning rate policy: '%s' (known: %s)"
                          % (policy, ", ".join(POLICIES)))
    if policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise SolverError("lr_policy '%s' needs stepsize > 0, got %d" % (policy, param.stepsize))
    if policy in ("step", "exp", "inv", "multistep", "sigmoid") and param.gamma < 0:
        raise SolverError("lr_policy '%s' needs gamma >= 0, got %g" % (policy, param.gamma))
    if policy == "poly" and param.max_iter <= 0:
        raise SolverError("lr_policy 'poly' needs max_iter > 0, got %d" % param.max_iter)


def learning_rate(param, iter, current_step):
    """-> (rate, current_step). Rounded to float32 as Caffe's Dtype rate is."""
    policy = param.lr_policy
    base_lr, gamma, power = param.base_lr, param.gamma, param.power
    if policy == "fixed":
        rate = base_lr
    elif policy == "step":
        current_step = iter // param.stepsize
        rate = base_lr * gamma ** current_step
    elif policy == "exp":
        rate = base_lr * gamma ** iter
    elif policy == "inv":
        rate = base_lr * (1.0 + gamma * iter) ** (-power)
    elif policy == "multistep":
        if current_step < len(param.stepvalue) and iter >= param.stepvalue[current_step]:
            current_step += 1
            log.info("MultiStep Status: Iteration %d, step = %d", iter, current_step)
        rate = base_lr * gamma ** current_step
    elif policy == "poly":
        rate = base_lr * (1.0 - float(np.float32(iter) / np.float32(param.max_iter))) ** power
    elif policy == "sigmoid":
        rate = base_lr / (1.0 + math.exp(-gamma * (iter - param.stepsize)))
    else:
        check_policy(param)
        raise AssertionError(policy)
    return float(np.float32(rate)), current_step
