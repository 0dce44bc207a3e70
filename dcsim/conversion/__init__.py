"""From a trained torch model to a spiking network: conversion of LSQ models (convert), the
thresholds of float ReLU models from their activations (thresholds) and the import of the official code's checkpoints (official)."""
