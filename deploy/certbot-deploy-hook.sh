#!/usr/bin/env bash
# certbot deploy hook for deploy/chatroom-tls.service: after every issue or
# renewal, copy the new certificate chain and key where the service reads
# them (root:chatroom, 0640), then `systemctl reload` it, which makes the
# running server load them (SIGHUP) without dropping a connection.
#
#   install -m 0755 deploy/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/chatroom.sh
#
# certbot sets RENEWED_LINEAGE (e.g. /etc/letsencrypt/live/chat.example.com).
# The files are copied, not linked: certbot's own are readable by root only,
# and a copy written then renamed is never seen half-written by the server.
set -euo pipefail

lineage=${RENEWED_LINEAGE:?run by certbot, which sets RENEWED_LINEAGE}
dest=${CHATROOM_TLS_DIR:-/etc/chatroom/tls}
service=${CHATROOM_SERVICE:-chatroom-tls}

install -d -m 0750 -o root -g chatroom "$dest"
for file in fullchain.pem privkey.pem; do
    install -m 0640 -o root -g chatroom "$lineage/$file" "$dest/.$file.new"
    mv -f "$dest/.$file.new" "$dest/$file"
done
systemctl reload "$service"
