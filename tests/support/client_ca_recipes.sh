# Client CAs and leaves made by the common openssl recipes, in the current directory, for
# test_e2e_dropin's -a tests: caN.pem is the anchor for lN.pem (+ key lN.key).
#   1: `openssl req -x509` with Debian's configuration (no keyUsage); a leaf without SAN and
#      AKI, with only the clientAuth EKU
#   2: a leaf from `openssl ca` (basicConstraints CA:FALSE, SKI, AKI; no keyUsage, no EKU)
#   3: a root with pathlen 1, name constraints and keyUsage keyCertSign; an intermediate
#      (i3.pem) with pathlen 0 and no keyUsage; a leaf inside the constraints
#   4: a CA whose keyUsage does not allow keyCertSign (must be refused)
#   5: a leaf under the intermediate of 3, outside its name constraints (must be refused)
set -e
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out $1 2>/dev/null; }
# 1
key ca1.key; openssl req -x509 -new -key ca1.key -out ca1.pem -subj /CN=ReqCA -days 30 2>/dev/null
key l1.key; openssl req -new -key l1.key -out l1.csr -subj /CN=alice 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nsubjectKeyIdentifier=none\nauthorityKeyIdentifier=none\n' > ext1
openssl x509 -req -in l1.csr -CA ca1.pem -CAkey ca1.key -CAcreateserial -out l1.pem -days 10 -extfile ext1 2>/dev/null
# 2: openssl ca with the usr_cert extensions of openssl.cnf
mkdir -p demoCA/newcerts; : > demoCA/index.txt; echo 01 > demoCA/serial
cat > ca.cnf <<'C'
[ ca ]
default_ca = CA_default
[ CA_default ]
dir = ./demoCA
database = $dir/index.txt
new_certs_dir = $dir/newcerts
serial = $dir/serial
default_md = sha256
policy = policy_any
x509_extensions = usr_cert
default_days = 10
unique_subject = no
[ policy_any ]
commonName = supplied
[ usr_cert ]
basicConstraints=CA:FALSE
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
[ req ]
distinguished_name = dn
[ dn ]
C
key ca2.key; openssl req -x509 -new -key ca2.key -out ca2.pem -subj /CN=OpensslCA -days 30 -config ca.cnf -addext basicConstraints=critical,CA:TRUE -addext subjectKeyIdentifier=hash 2>/dev/null
key l2.key; openssl req -new -key l2.key -out l2.csr -subj /CN=bob -config ca.cnf 2>/dev/null
openssl ca -batch -config ca.cnf -cert ca2.pem -keyfile ca2.key -in l2.csr -out l2.pem 2>/dev/null
# 3: root with pathlen and name constraints, KU keyCertSign, intermediate pathlen 0 without KU
key ca3.key; openssl req -x509 -new -key ca3.key -out ca3.pem -subj /CN=ConstrainedRoot -days 30 -addext basicConstraints=critical,CA:TRUE,pathlen:1 -addext keyUsage=critical,keyCertSign,cRLSign -addext "nameConstraints=critical,permitted;email:example.test,permitted;DNS:example.test" 2>/dev/null
key i3.key; openssl req -new -key i3.key -out i3.csr -subj /CN=Intermediate 2>/dev/null
printf 'basicConstraints=critical,CA:TRUE,pathlen:0\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' > exti
openssl x509 -req -in i3.csr -CA ca3.pem -CAkey ca3.key -CAcreateserial -out i3.pem -days 10 -extfile exti 2>/dev/null
key l3.key; openssl req -new -key l3.key -out l3.csr -subj "/CN=carol/emailAddress=carol@example.test" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nsubjectAltName=email:carol@example.test\n' > ext3
openssl x509 -req -in l3.csr -CA i3.pem -CAkey i3.key -CAcreateserial -out l3.pem -days 10 -extfile ext3 2>/dev/null
# 4: CA with keyUsage lacking keyCertSign
key ca4.key; openssl req -x509 -new -key ca4.key -out ca4.pem -subj /CN=NoCertSignCA -days 30 -addext keyUsage=critical,digitalSignature 2>/dev/null
key l4.key; openssl req -new -key l4.key -out l4.csr -subj /CN=dave 2>/dev/null
openssl x509 -req -in l4.csr -CA ca4.pem -CAkey ca4.key -CAcreateserial -out l4.pem -days 10 -extfile ext1 2>/dev/null
# 5: a leaf under the constrained intermediate, its email outside the constraints
key l5.key; openssl req -new -key l5.key -out l5.csr -subj "/CN=eve" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\nsubjectAltName=email:eve@evil.test\n' > ext5
openssl x509 -req -in l5.csr -CA i3.pem -CAkey i3.key -CAcreateserial -out l5.pem -days 10 -extfile ext5 2>/dev/null
