#!/bin/sh
# Regenerates the local-only development CA and the certificate of demo.meridian.test that the
# edges of config/local/ serve on port 8443. Needs openssl. Run from anywhere:
#   sh config/local/tls/generate.sh
# The CA's private key is thrown away: to issue more, rerun this script (a new CA each time).
set -eu
cd "$(dirname "$0")"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=Meridian local development CA (not for use outside loopback)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tmp/ca.key" -out ca.pem 2>/dev/null

openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=demo.meridian.test" -keyout demo.key -out "$tmp/demo.csr" 2>/dev/null
cat > "$tmp/ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectAltName=DNS:demo.meridian.test
EXT
openssl x509 -req -in "$tmp/demo.csr" -CA ca.pem -CAkey "$tmp/ca.key" -CAcreateserial \
    -CAserial "$tmp/ca.srl" -days 3650 -extfile "$tmp/ext" -out "$tmp/leaf.pem" 2>/dev/null
cat "$tmp/leaf.pem" ca.pem > demo.pem
chmod 644 demo.key
echo "wrote ca.pem, demo.pem (leaf + CA) and demo.key in $(pwd)"
