// A plain local Hardhat network for bench/bot_bench.py --node http://127.0.0.1:8545
// (unlocked funded accounts, automine on; the bench switches automine off and mines by hand).
module.exports = {
  networks: {
    hardhat: { chainId: 31337, blockGasLimit: 30000000, mining: { auto: true } },
  },
};
