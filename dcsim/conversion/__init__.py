"""From a trained torch model to a spiking network: conversion of LSQ models (convert), threshold
normalization of float ReLU models (thresholds) and the import of the official code's checkpoints (official)."""
