#!/bin/sh
# azd postdeploy hook: create the Event Grid subscriptions once the functions exist.
#
# Why here and not in infra/main.bicep: Event Grid validates a subscription to an Azure Function
# endpoint (<site>/functions/<name>) against the function, and a function exists only after the
# code is deployed and the host has indexed it. So `azd provision` creates the topics, `azd deploy`
# the code, and this hook (infra/subscriptions.bicep) the subscriptions. Idempotent: a re-run
# updates them in place. Needs the Azure CLI signed in to the same subscription (az login).
set -eu

: "${AZURE_SUBSCRIPTION_ID:?run through azd (azd up / azd deploy): AZURE_SUBSCRIPTION_ID is not set}"
: "${AZURE_RESOURCE_GROUP:?AZURE_RESOURCE_GROUP is not set: run azd provision first}"
: "${AZURE_FUNCTION_APP_ID:?AZURE_FUNCTION_APP_ID is not set: run azd provision first}"

here=$(CDPATH='' cd -- "$(dirname -- "$0")" && pwd)
wait_seconds=${EVENTGRID_HOOK_WAIT_SECONDS:-600}

echo "Waiting for keyvault_events and refresh_events on ${AZURE_FUNCTION_APP_NAME:-the function app} (up to ${wait_seconds}s)..."
waited=0
while :; do
  names=$(az rest --method get \
    --url "https://management.azure.com${AZURE_FUNCTION_APP_ID}/functions?api-version=2024-04-01" \
    --query "value[].name" --output tsv 2>/dev/null || true)
  case "$names" in
    *keyvault_events*)
      case "$names" in *refresh_events*) break ;; esac ;;
  esac
  if [ "$waited" -ge "$wait_seconds" ]; then
    echo "The functions are not listed after ${wait_seconds}s; check the app's deployment log, then run: azd hooks run postdeploy" >&2
    exit 1
  fi
  sleep 15
  waited=$((waited + 15))
done

echo "Creating the Event Grid subscriptions..."
az deployment group create \
  --subscription "$AZURE_SUBSCRIPTION_ID" \
  --resource-group "$AZURE_RESOURCE_GROUP" \
  --name "eventgrid-subscriptions" \
  --template-file "$here/../subscriptions.bicep" \
  --parameters \
    functionAppId="$AZURE_FUNCTION_APP_ID" \
    keyVaultSystemTopicName="$KEY_VAULT_SYSTEM_TOPIC_NAME" \
    keyVaultResourceGroupName="$KEY_VAULT_RESOURCE_GROUP" \
    refreshEventsTopicName="$REFRESH_EVENTS_TOPIC_NAME" \
    storageAccountId="$AZURE_STORAGE_ACCOUNT_ID" \
    deadLetterContainerName="$DEAD_LETTER_CONTAINER_NAME" \
  --output none
echo "Event Grid subscriptions are in place: evgs-keyvault-events, evgs-refresh-events."
