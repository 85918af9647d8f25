// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {MerkleProof} from "@openzeppelin/contracts/utils/cryptography/MerkleProof.sol";

/// @title RewardDistributor
/// @notice Pays an ERC-20 token by cumulative Merkle claims. Per dataset, a rewards root is
///         published for each batch seq that pays anything, seqs ascending (a batch with no
///         accepted row publishes nothing); it commits every contributor's cumulative amount over
///         batches 0..seq as an OpenZeppelin StandardMerkleTree leaf of (address, uint256). A claim
///         pays the difference to what the account already received. Funds come from the
///         treasury, a separate key that approves this contract: the distributor key publishes
///         roots and holds no tokens. Each dataset is solvent on its own: its claims never pay
///         out more than was funded for it (its cumulative total), whatever a root says.
contract RewardDistributor is AccessControl {
    using SafeERC20 for IERC20;

    bytes32 public constant DISTRIBUTOR_ROLE = keccak256("DISTRIBUTOR_ROLE");

    IERC20 public immutable token;
    /// @notice The account rewards are pulled from; it approves this contract for what it funds.
    address public immutable treasury;

    /// @dev One storage slot per dataset, read and written once by a claim (gas: a claim's cost is
    ///      mostly cold slots). `funded` is the cumulative total its published roots allocate.
    struct Funds {
        uint128 funded;
        uint120 paid;
        bool pointsOnly;
    }

    mapping(bytes32 datasetId => uint64) private _nextSeq;
    mapping(bytes32 datasetId => bytes32) public latestRoot;
    mapping(bytes32 datasetId => Funds) private _funds;
    mapping(bytes32 datasetId => mapping(uint64 seq => bytes32)) public rootAt;
    mapping(bytes32 datasetId => mapping(address account => uint256)) public claimed;

    event RewardsPublished(bytes32 indexed datasetId, uint64 indexed seq, bytes32 root, uint256 cumulativeTotal);
    event Claimed(bytes32 indexed datasetId, address indexed account, uint256 amount, uint256 cumulativeAmount);

    error SeqNotNext(bytes32 datasetId, uint64 expected, uint64 given);  // expected: the least seq accepted
    error TotalDecreased(uint256 previous, uint256 given);
    error InvalidProof();
    error NothingToClaim();
    error PayoutKindMismatch(bytes32 datasetId, bool pointsOnly);
    error ExceedsFunding(bytes32 datasetId, uint256 funded, uint256 paid, uint256 amount);
    error TotalTooLarge(uint256 given);
    error ZeroRoot();

    constructor(address admin, address distributor, IERC20 token_, address treasury_) {
        token = token_;
        treasury = treasury_;
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(DISTRIBUTOR_ROLE, distributor);
    }

    /// @notice One past the latest seq published for the dataset (0 before its first); rootAt of a
    ///         seq below it that published nothing is zero.
    function nextSeq(bytes32 datasetId) external view returns (uint64) {
        return _nextSeq[datasetId];
    }

    /// @notice What was funded for the dataset: the sum its published roots allocate.
    function cumulativeTotal(bytes32 datasetId) external view returns (uint256) {
        return _funds[datasetId].funded;
    }

    /// @notice What the dataset's claims have paid out; never more than its cumulativeTotal.
    function paid(bytes32 datasetId) external view returns (uint256) {
        return _funds[datasetId].paid;
    }

    /// @notice Datasets paid in off-chain points: roots are published, no token moves, no claims.
    function pointsOnly(bytes32 datasetId) external view returns (bool) {
        return _funds[datasetId].pointsOnly;
    }

    /// @notice Publish the rewards root of batch `seq`; pulls the increase of the cumulative
    ///         total from the treasury, so the contract always holds what can still be claimed.
    function publish(bytes32 datasetId, uint64 seq, bytes32 root, uint256 newCumulativeTotal)
        external
        onlyRole(DISTRIBUTOR_ROLE)
    {
        uint256 increase = _record(datasetId, seq, root, newCumulativeTotal, false);
        if (increase > 0) {
            token.safeTransferFrom(treasury, address(this), increase);
        }
    }

    /// @notice Publish the points ledger root of batch `seq` for a dataset paid in off-chain
    ///         points: the root is on chain for anyone to check, and no token moves.
    function publishPoints(bytes32 datasetId, uint64 seq, bytes32 root, uint256 newCumulativeTotal)
        external
        onlyRole(DISTRIBUTOR_ROLE)
    {
        _record(datasetId, seq, root, newCumulativeTotal, true);
    }

    function _record(bytes32 datasetId, uint64 seq, bytes32 root, uint256 newCumulativeTotal, bool points)
        private
        returns (uint256 increase)
    {
        if (root == bytes32(0)) revert ZeroRoot();  // zero marks "nothing published" (first publication, gaps)
        Funds memory funds = _funds[datasetId];
        if (latestRoot[datasetId] == bytes32(0)) {
            funds.pointsOnly = points;  // the dataset's first publication
        } else if (funds.pointsOnly != points) {
            revert PayoutKindMismatch(datasetId, funds.pointsOnly);
        }
        uint64 expected = _nextSeq[datasetId];
        if (seq < expected) revert SeqNotNext(datasetId, expected, seq);
        uint256 previous = funds.funded;
        if (newCumulativeTotal < previous) revert TotalDecreased(previous, newCumulativeTotal);
        if (newCumulativeTotal > type(uint120).max) revert TotalTooLarge(newCumulativeTotal);
        _nextSeq[datasetId] = seq + 1;
        latestRoot[datasetId] = root;
        rootAt[datasetId][seq] = root;
        funds.funded = uint128(newCumulativeTotal);
        _funds[datasetId] = funds;
        emit RewardsPublished(datasetId, seq, root, newCumulativeTotal);
        return newCumulativeTotal - previous;
    }

    /// @notice Pay `account` its cumulative amount under the latest root, less what it was paid.
    ///         Anyone may submit the claim; the tokens always go to `account`. A claim that would
    ///         pay the dataset out beyond what was funded for it reverts (ExceedsFunding), so one
    ///         dataset's root can never take another dataset's tokens.
    function claim(bytes32 datasetId, address account, uint256 cumulativeAmount, bytes32[] calldata proof)
        external
    {
        Funds memory funds = _funds[datasetId];
        if (funds.pointsOnly) revert PayoutKindMismatch(datasetId, true);
        bytes32 leaf = keccak256(bytes.concat(keccak256(abi.encode(account, cumulativeAmount))));
        if (!MerkleProof.verifyCalldata(proof, latestRoot[datasetId], leaf)) revert InvalidProof();
        uint256 already = claimed[datasetId][account];
        if (cumulativeAmount <= already) revert NothingToClaim();
        uint256 amount = cumulativeAmount - already;
        if (funds.paid + amount > funds.funded) revert ExceedsFunding(datasetId, funds.funded, funds.paid, amount);
        claimed[datasetId][account] = cumulativeAmount;
        funds.paid += uint120(amount);  // below funded, itself below 2^120
        _funds[datasetId] = funds;
        emit Claimed(datasetId, account, amount, cumulativeAmount);
        token.safeTransfer(account, amount);
    }
}
