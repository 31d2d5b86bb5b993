// The Functions app on the Flex Consumption plan (Linux, Python 3.11), run as the user-assigned
// identity, with every app setting the code reads (tests/infra/test_settings_contract.py checks).
@description('Function app name (func-<token>).')
param name string

@description('Flex Consumption plan name (asp-<token>).')
param planName string

@description('Region.')
param location string

@description('Tags.')
param tags object

@description('Resource id of the app\'s user-assigned identity.')
param identityId string

@description('Client id of the app\'s user-assigned identity.')
param identityClientId string

@description('The Functions host\'s storage account (identity-based AzureWebJobsStorage).')
param storageAccountName string

@description('Container that holds the deployment package.')
param deploymentContainerName string

@description('Application Insights connection string (no secret: ingestion needs an Entra ID token, local auth is off).')
param applicationInsightsConnectionString string

@description('KEY_VAULT_URL, with the trailing slash.')
param keyVaultUri string

@description('REMEDIATION_BINDINGS: a path shipped with the app, or inline JSON.')
param remediationBindings string

@description('REMEDIATION_SWEEP_SCHEDULE.')
param sweepSchedule string

@description('REMEDIATION_CONCURRENCY.')
param concurrency int

@description('REMEDIATION_MAX_ATTEMPTS.')
param maxAttempts int

@description('REMEDIATION_ATTEMPT_WINDOW (seconds).')
param attemptWindowSeconds int

@description('REMEDIATION_REFRESH_BUDGET.')
param refreshBudget int

@description('REMEDIATION_REFRESH_TIMEOUT (seconds).')
param refreshTimeoutSeconds int

@description('REMEDIATION_HTTP_TIMEOUT (seconds).')
param httpTimeoutSeconds int

@description('REMEDIATION_SWEEP_BUDGET (seconds).')
param sweepBudgetSeconds int

@description('REMEDIATION_INVENTORY_REFRESH (seconds).')
param inventoryRefreshSeconds int

@description('REMEDIATION_INVENTORY_SOURCE: auto, admin or per-dataset.')
param inventorySource string

@description('REMEDIATION_FANOUT_TARGETS.')
param fanoutTargets int

@description('REMEDIATION_LEASE_SECONDS.')
param leaseSeconds int

@description('REMEDIATION_SETTLE_SECONDS.')
param settleSeconds int

@description('REMEDIATION_WORK_QUEUE (the queue trigger reads it as %REMEDIATION_WORK_QUEUE%).')
param workQueueName string

@description('POWERBI_API_URL.')
param powerBiApiUrl string

@description('FABRIC_API_URL.')
param fabricApiUrl string

@description('POWERBI_SCOPE (empty: derived from the API host).')
param powerBiScope string

@description('POWERBI_PUBLIC_CLIENT_ID (empty: no OAuth2 caller-identity bindings).')
param powerBiPublicClientId string

@description('AZURE_AUTHORITY_HOST.')
param authorityHost string

@description('REMEDIATION_EVENTSTREAM_CONNECTION: a Key Vault reference to the Eventstream custom endpoint\'s connection string, or empty.')
param eventstreamConnection string

@description('The Eventstream custom endpoint\'s namespace, for an identity-based connection (REMEDIATION_EVENTSTREAM_CONNECTION__fullyQualifiedNamespace), or empty.')
param eventstreamNamespace string

@description('REMEDIATION_EVENTSTREAM_HUB.')
param eventstreamHubName string

@description('REMEDIATION_EVENTSTREAM_CONSUMER_GROUP.')
param eventstreamConsumerGroup string

@description('Flex Consumption: maximum instance count.')
param maximumInstanceCount int

@description('Flex Consumption: instance memory (MB).')
param instanceMemoryMB int

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  #checkov:skip=CKV_AZURE_225:No zone redundancy: on Flex Consumption it is a per-region option with always-ready cost; the healer is idempotent and the sweep catches up after an outage.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true
  }
}

// Every setting of local.settings.json.example that means something in Azure. Not here, on
// purpose (tests/infra/test_settings_contract.py lists each with its reason):
// FUNCTIONS_WORKER_RUNTIME (Flex takes the runtime from functionAppConfig.runtime and refuses
// the setting), AzureWebJobsStorage as a connection string (identity-based below instead),
// REMEDIATION_STATE_PATH (the ledger is in Table storage), the service principal's
// AZURE_CLIENT_SECRET / AZURE_CLIENT_CERTIFICATE_* (the managed identity is used; a secret never
// goes into an app setting), REQUESTS_CA_BUNDLE / SSL_CERT_FILE (sandbox only).
resource site 'Microsoft.Web/sites@2024-04-01' = {
  #checkov:skip=CKV_AZURE_222:Public network access stays on: Event Grid delivers to the functions and operators call /api/remediate over the public endpoint (function keys, HTTPS only, TLS 1.2); a VNet/private endpoint variant is the user's choice.
  #checkov:skip=CKV_AZURE_17:No client certificates: HTTP callers authenticate with function keys and Event Grid's AzureFunction delivery presents none.
  #checkov:skip=CKV_AZURE_212:No minimum instance count: Flex Consumption scales per function from zero; a cold start only delays a heal, and the timer sweep reconciles anything missed.
  #checkov:skip=CKV_AZURE_213:No health check path: App Service health check does not apply to Flex Consumption (the platform's scale controller manages instances) and the app serves no health endpoint.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'healer'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    clientCertEnabled: false
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
      appSettings: [
        // The Functions host's storage, through the identity (no shared key exists).
        {
          name: 'AzureWebJobsStorage__accountName'
          value: storage.name
        }
        {
          name: 'AzureWebJobsStorage__credential'
          value: 'managedidentity'
        }
        {
          name: 'AzureWebJobsStorage__clientId'
          value: identityClientId
        }
        {
          name: 'AzureWebJobsFeatureFlags'
          value: 'EnableWorkerIndexing'
        }
        // Telemetry: Entra ID ingestion with the user-assigned identity (local auth is off).
        {
          name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
          value: applicationInsightsConnectionString
        }
        {
          name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
          value: 'ClientId=${identityClientId};Authorization=AAD'
        }
        {
          name: 'APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL'
          value: 'true'
        }
        {
          name: 'APPLICATIONINSIGHTS_CONTROLPLANE_DISABLED'
          value: 'true'
        }
        {
          name: 'OTEL_EXPERIMENTAL_RESOURCE_DETECTORS'
          value: 'azure_app_service'
        }
        // Who the app is: the user-assigned identity (AZURE_CLIENT_ID without a secret).
        {
          name: 'AZURE_TENANT_ID'
          value: tenant().tenantId
        }
        {
          name: 'AZURE_CLIENT_ID'
          value: identityClientId
        }
        {
          name: 'AZURE_AUTHORITY_HOST'
          value: authorityHost
        }
        {
          name: 'KEY_VAULT_URL'
          value: keyVaultUri
        }
        {
          name: 'POWERBI_API_URL'
          value: powerBiApiUrl
        }
        {
          name: 'POWERBI_SCOPE'
          value: powerBiScope
        }
        {
          name: 'FABRIC_API_URL'
          value: fabricApiUrl
        }
        {
          name: 'POWERBI_PUBLIC_CLIENT_ID'
          value: powerBiPublicClientId
        }
        {
          name: 'REMEDIATION_BINDINGS'
          value: remediationBindings
        }
        {
          name: 'REMEDIATION_SWEEP_SCHEDULE'
          value: sweepSchedule
        }
        {
          name: 'REMEDIATION_CONCURRENCY'
          value: string(concurrency)
        }
        {
          name: 'REMEDIATION_MAX_ATTEMPTS'
          value: string(maxAttempts)
        }
        {
          name: 'REMEDIATION_ATTEMPT_WINDOW'
          value: string(attemptWindowSeconds)
        }
        {
          name: 'REMEDIATION_REFRESH_BUDGET'
          value: string(refreshBudget)
        }
        {
          name: 'REMEDIATION_REFRESH_TIMEOUT'
          value: string(refreshTimeoutSeconds)
        }
        {
          name: 'REMEDIATION_HTTP_TIMEOUT'
          value: string(httpTimeoutSeconds)
        }
        {
          name: 'REMEDIATION_SWEEP_BUDGET'
          value: string(sweepBudgetSeconds)
        }
        {
          name: 'REMEDIATION_INVENTORY_REFRESH'
          value: string(inventoryRefreshSeconds)
        }
        {
          name: 'REMEDIATION_INVENTORY_SOURCE'
          value: inventorySource
        }
        {
          name: 'REMEDIATION_FANOUT_TARGETS'
          value: string(fanoutTargets)
        }
        {
          name: 'REMEDIATION_LEASE_SECONDS'
          value: string(leaseSeconds)
        }
        {
          name: 'REMEDIATION_SETTLE_SECONDS'
          value: string(settleSeconds)
        }
        {
          name: 'REMEDIATION_WORK_QUEUE'
          value: workQueueName
        }
        // The Eventstream custom endpoint of Fabric job events (the job_events function exists
        // only when one of the two connections is set): a Key Vault reference to its connection
        // string, or its namespace with the identity.
        {
          name: 'REMEDIATION_EVENTSTREAM_CONNECTION'
          value: eventstreamConnection
        }
        {
          name: 'REMEDIATION_EVENTSTREAM_CONNECTION__fullyQualifiedNamespace'
          value: eventstreamNamespace
        }
        {
          name: 'REMEDIATION_EVENTSTREAM_CONNECTION__credential'
          value: empty(eventstreamNamespace) ? '' : 'managedidentity'
        }
        {
          name: 'REMEDIATION_EVENTSTREAM_CONNECTION__clientId'
          value: empty(eventstreamNamespace) ? '' : identityClientId
        }
        {
          name: 'REMEDIATION_EVENTSTREAM_HUB'
          value: eventstreamHubName
        }
        {
          name: 'REMEDIATION_EVENTSTREAM_CONSUMER_GROUP'
          value: eventstreamConsumerGroup
        }
      ]
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output name string = site.name
output id string = site.id
output uri string = 'https://${site.properties.defaultHostName}'
