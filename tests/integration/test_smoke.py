from conftest import WAD


def test_deploy_lists_default_markets(protocol):
    assert protocol.engine.functions.market_count().call() == 2
    assert protocol.engine.functions.collateral_count().call() == 2


def test_snapshot_isolates_tests_part1(protocol, actors):
    protocol.deposit(actors.trader, "USDC", 10**6)
    assert protocol.cash(actors.trader.address) == WAD


def test_snapshot_isolates_tests_part2(protocol, actors):
    assert protocol.cash(actors.trader.address) == 0
