"""Gas estimation with py-evm's answers in about a third of the executions.

py-evm's default estimator (``eth.estimators.gas.binary_gas_search_intrinsic_tolerance``)
bisects ``[intrinsic gas, block gas limit]`` down to 21,000 gas, executing the transaction at
every midpoint: about 13 executions for a contract call, which is most of what a test or a demo
spends on an in-process chain. :func:`binary_gas_search_fewer_runs` returns the *same* number:
it walks the same midpoints with the same rule, but decides most of them without executing:

* one run at the block gas limit (as py-evm does) gives the gas the transaction consumes before
  refunds, ``C``; a midpoint below ``C`` cannot succeed (it runs out on the same path);
* one run at a probe a little above ``C`` (``C + C/32 + 5,000``, which covers the 1/64 kept back
  at each call and the 2,300 that a storage write needs left) that succeeds makes every midpoint
  at or above it succeed (success is monotonic in the gas limit, which py-evm's bisection assumes
  as well);
* only midpoints in between are executed, at most one or two with a 21,000 tolerance.

The balance check of the midpoints (py-evm runs them at the transaction's gas price, and a
sender that cannot afford the gas is refused with ``ValidationError``) is made for the largest
midpoint, so an estimate that py-evm would refuse is refused here too. If the probe fails (a
contract that needs far more gas than it consumes), every midpoint is executed, as py-evm does.

:func:`install` puts it into every py-evm chain created afterwards in this process and in the
processes it starts, through py-evm's own ``GAS_ESTIMATOR_BACKEND_FUNC`` setting.
"""

from __future__ import annotations

import os
from typing import Any

from eth.vm.spoof import SpoofTransaction

TOLERANCE = 21_000              # py-evm's default: binary_gas_search_intrinsic_tolerance
ENV = "GAS_ESTIMATOR_BACKEND_FUNC"
THIS = f"{__name__}.binary_gas_search_fewer_runs"


def _run(state: Any, transaction: Any) -> Any:
    """The computation of ``transaction`` on ``state``, which is left as it was."""
    snapshot = state.snapshot()
    try:
        return state.apply_transaction(transaction)
    finally:
        state.revert(snapshot)


def binary_gas_search_fewer_runs(state: Any, transaction: Any, tolerance: int = TOLERANCE) -> int:
    """py-evm's ``binary_gas_search(state, transaction, tolerance)``, same result (see the module
    docstring); usable as a py-evm chain's ``gas_estimator``."""
    if not hasattr(transaction, "sender"):
        raise TypeError("Transaction is missing attribute sender: use SpoofTransaction with 'from'")
    intrinsic = transaction.intrinsic_gas
    if not _run(state, SpoofTransaction(transaction, gas=intrinsic, gas_price=0)).is_error:
        return intrinsic
    limit = state.gas_limit
    at_limit = _run(state, SpoofTransaction(transaction, gas=limit, gas_price=0))
    if at_limit.is_error:
        raise at_limit.error
    consumed = limit - at_limit.get_gas_remaining()       # before refunds: needed in full
    smallest_success = limit      # executed, or known from a smaller executed success
    largest_failure = intrinsic
    probe = consumed + consumed // 32 + 5_000
    probed = probe >= limit       # nothing to learn above the limit
    checked_balance = False

    def succeeds(gas: int) -> bool:
        nonlocal smallest_success, largest_failure, probed, checked_balance
        if not checked_balance:
            # py-evm runs each midpoint at the transaction's own gas price; the first (largest)
            # midpoint decides whether the sender can afford any of them.
            state.validate_transaction(SpoofTransaction(transaction, gas=gas))
            checked_balance = True
        if gas < consumed:
            return False
        if not probed and probe < gas:
            probed = True
            if not _run(state, SpoofTransaction(transaction, gas=probe)).is_error:
                smallest_success = probe
        if gas >= smallest_success:
            return True
        if gas <= largest_failure:
            return False
        ok = not _run(state, SpoofTransaction(transaction, gas=gas)).is_error
        if ok:
            smallest_success = gas
        else:
            largest_failure = gas
        return ok

    minimum_viable = limit
    maximum_out_of_gas = intrinsic
    while minimum_viable - maximum_out_of_gas > tolerance:
        midpoint = (minimum_viable + maximum_out_of_gas) // 2
        if succeeds(midpoint):
            minimum_viable = midpoint
        else:
            maximum_out_of_gas = midpoint
    return minimum_viable


def install() -> None:
    """Use :func:`binary_gas_search_fewer_runs` in every py-evm chain created from now on, here
    and in child processes (unless ``GAS_ESTIMATOR_BACKEND_FUNC`` is already set)."""
    os.environ.setdefault(ENV, THIS)
