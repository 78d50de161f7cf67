"""Package discovery only (metadata lives in pyproject.toml).

The repository folders ``plugins/``, ``kernels/`` and ``templates/`` ship inside the same wheel as
the import packages ``lrnnx_plugins``, ``lrnnx_kernels`` and ``lrnnx_templates``: names that cannot
clash with other distributions.  Subpackages are found automatically so nothing here needs
editing when a folder is added.
"""

from setuptools import find_packages, setup

MAPPED = {"lrnnx_plugins": "plugins", "lrnnx_kernels": "kernels", "lrnnx_templates": "templates"}

packages = find_packages(include=["lrnnx", "lrnnx.*"])
package_dir = {}
for pkg, folder in MAPPED.items():
    package_dir[pkg] = folder
    packages.append(pkg)
    packages += [f"{pkg}.{sub}" for sub in find_packages(folder)]

setup(
    packages=packages,
    package_dir=package_dir,
    package_data={
        "lrnnx_kernels": ["**/*.cpp", "**/*.h", "**/*.cu", "**/*.cuh"],
        "lrnnx_templates": ["**/*"],
    },
)
