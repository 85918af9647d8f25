// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";

/// @title BatchAnchor
/// @notice Holds, per dataset and batch seq, the RFC 9162 Merkle root of the batch's rows, the
///         tree size and the SHA-256 of the batch manifest. Each seq is written once, in order.
contract BatchAnchor is AccessControl {
    bytes32 public constant ANCHORER_ROLE = keccak256("ANCHORER_ROLE");

    struct Batch {
        bytes32 root;
        bytes32 manifestHash;
        uint64 treeSize;
        uint64 anchoredAt;
    }

    mapping(bytes32 datasetId => mapping(uint64 seq => Batch)) private _batches;
    mapping(bytes32 datasetId => uint64) private _nextSeq;

    event BatchAnchored(
        bytes32 indexed datasetId, uint64 indexed seq, bytes32 root, uint64 treeSize, bytes32 manifestHash
    );

    error SeqNotNext(bytes32 datasetId, uint64 expected, uint64 given);
    error ZeroManifestHash();

    constructor(address admin, address anchorer) {
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
        _grantRole(ANCHORER_ROLE, anchorer);
    }

    /// @notice Anchor batch `seq` of `datasetId`. `seq` must equal nextSeq(datasetId).
    function anchor(bytes32 datasetId, uint64 seq, bytes32 root, uint64 treeSize, bytes32 manifestHash)
        external
        onlyRole(ANCHORER_ROLE)
    {
        uint64 expected = _nextSeq[datasetId];
        if (seq != expected) revert SeqNotNext(datasetId, expected, seq);
        // A zero manifest hash would be indistinguishable from "not anchored".
        if (manifestHash == bytes32(0)) revert ZeroManifestHash();
        _batches[datasetId][seq] = Batch(root, manifestHash, treeSize, uint64(block.timestamp));
        _nextSeq[datasetId] = expected + 1;
        emit BatchAnchored(datasetId, seq, root, treeSize, manifestHash);
    }

    /// @notice What is anchored for (datasetId, seq); all zero if nothing is.
    function batch(bytes32 datasetId, uint64 seq)
        external
        view
        returns (bytes32 root, uint64 treeSize, bytes32 manifestHash, uint64 anchoredAt)
    {
        Batch storage b = _batches[datasetId][seq];
        return (b.root, b.treeSize, b.manifestHash, b.anchoredAt);
    }

    function nextSeq(bytes32 datasetId) external view returns (uint64) {
        return _nextSeq[datasetId];
    }
}
