#!/usr/bin/env bash
# certbot deploy hook for deploy/chatroom-tls.service. After certbot issues
# or renews chatroom's certificate, it copies the new chain and key to where
# the service reads them, then reloads the service, which makes the running
# server load the new pair (SIGHUP) without dropping a connection.
#
#   install -m 0755 deploy/certbot-deploy-hook.sh /etc/letsencrypt/renewal-hooks/deploy/chatroom-tls.sh
#   sed -i 's/^cert_name=[^ ]*/cert_name=chat.example.com/' /etc/letsencrypt/renewal-hooks/deploy/chatroom-tls.sh
#
# certbot runs every hook in renewal-hooks/deploy/ after every renewal, of
# every certificate on the machine, and sets RENEWED_LINEAGE to that
# certificate's live directory (/etc/letsencrypt/live/NAME). This hook acts
# only when NAME is `cert_name` below, and says so on stderr (which certbot
# logs) when it leaves one alone. certbot runs the directory's hooks on
# renewal; for the first issue, name this file with --deploy-hook too
# (certbot runs it once even when it is in both places).
#
# Why copies: certbot's files are readable by root only, and the service
# runs as the unprivileged user `chatroom`. The copies are owned
# root:chatroom, mode 0640: the server can read them, not change them.
# Each is written under a temporary name and renamed over the old one, so
# the server never reads a file half-written.
set -euo pipefail

cert_name=chat.example.com             # your certificate's name, as `certbot certificates` shows it
dest=/etc/chatroom/tls                 # --tls-cert and --tls-key of the service live here
group=chatroom                         # the service's Group=
service=chatroom-tls                   # the unit to reload

lineage=${RENEWED_LINEAGE:?is set by certbot; to run this by hand: RENEWED_LINEAGE=/etc/letsencrypt/live/NAME $0}
if [[ ${lineage%/} != */live/"$cert_name" ]]; then
    echo "${0##*/}: $lineage is not chatroom's certificate ($cert_name); nothing to do" >&2
    exit 0
fi

install -d -m 0750 -o root -g "$group" "$dest"
for file in fullchain.pem privkey.pem; do
    install -m 0640 -o root -g "$group" "$lineage/$file" "$dest/.$file.new"
    mv -f "$dest/.$file.new" "$dest/$file"
done

# A service that is not running reads the files when it starts; only a
# running one needs telling.
if systemctl is-active --quiet "$service"; then
    systemctl reload "$service"
    echo "${0##*/}: $cert_name copied to $dest; $service reloaded" >&2
else
    echo "${0##*/}: $cert_name copied to $dest; $service is not running, it will read them when it starts" >&2
fi
