"""Test doubles: fake sysfs trees and a stand-in qzip (no hardware)."""
