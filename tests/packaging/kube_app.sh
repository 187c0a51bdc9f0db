# The stand-in application of kubernetes_sidecar.sh (busybox sh in a scratch image): what an
# application beside the agent does in a pod without native sidecars. It waits for the token
# file, retries until the agent answers, reads one secret from 127.0.0.1:7779 and prints its
# length (never the value), then keeps running as an application would, until SIGTERM.
i=0
until [ -s /run/clef/token ]; do
  i=$((i + 1)); [ "$i" -le 300 ] || { echo "app: no token file after 30 s"; exit 1; }
  sleep 0.1
done
token=$(cat /run/clef/token) || { echo "app: cannot read /run/clef/token"; exit 1; }
i=0
until value=$(wget -q -O - --header "Authorization: Bearer $token" http://127.0.0.1:7779/v1/secrets/database/DB_PASSWORD); do
  i=$((i + 1)); [ "$i" -le 300 ] || { echo "app: no answer from 127.0.0.1:7779 after 30 s"; exit 1; }
  sleep 0.1
done
echo "app: DB_PASSWORD has ${#value} characters"
trap 'exit 0' TERM
sleep 2147483647 &
wait
