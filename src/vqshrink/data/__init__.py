"""Datasets: synthetic Gaussian mixtures and the prepared image datasets."""

from vqshrink.data.cifar10 import prepare_cifar10
from vqshrink.data.digits import prepare_digits
from vqshrink.data.imagenet100 import prepare_imagenet100
from vqshrink.data.odir import prepare_odir
from vqshrink.data.prepared import DatasetError, PreparedImages

# name -> function preparing that image dataset into a directory (see vqshrink.data.prepared)
PREPARERS = {
    "imagenet100": prepare_imagenet100,
    "odir": prepare_odir,
    "cifar10": prepare_cifar10,
    "digits": prepare_digits,
}
