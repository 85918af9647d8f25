// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/// @title RewardToken
/// @notice The ERC-20 the embedded default pays rewards in. The whole supply is minted once to
///         the treasury at deployment; on a real chain any ERC-20 can be used instead.
contract RewardToken is ERC20 {
    constructor(address treasury, uint256 supply) ERC20("anchorlake Reward", "ALR") {
        _mint(treasury, supply);
    }
}
