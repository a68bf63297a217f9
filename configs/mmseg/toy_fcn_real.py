# Real toy images only. The mix config beside it differs by the lines marked "synthaug".
_base_ = ["./_base_/toy_fcn.py"]
